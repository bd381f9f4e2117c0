//! QEMU guests attached the way operators attach VMs: QEMU creates its tap
//! (`-netdev tap,ifname=...`), vrouter attaches it as a `netdev` port (AF_PACKET), and the
//! guest's own kernel is the peer: virtio-net with its offloads, and 8021q for trunks (this host
//! kernel has no VLAN sub-interfaces). Guests boot under TCG from scripts/lib/guest-image.sh.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn qemu_guest_on_netdev_port_talks_to_namespace_guest() {
    let mut lab = Lab::new("q");
    let qtap = lab.name("qt");
    let guest_mac = "52:54:00:20:01:50";
    let script = r#"
. /lib/vrguest.sh
# The address comes from vrouter's DHCP server (a reservation for this NIC's MAC).
cat > /tmp/udhcpc.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] && ip addr add "$ip/$mask" dev "$interface" && echo "VRT_LEASE=$ip router=$router mtu=$mtu"
exit 0
EOS
chmod +x /tmp/udhcpc.sh
ip link set eth0 up
if busybox udhcpc -i eth0 -n -q -t 20 -T 2 -s /tmp/udhcpc.sh -O mtu; then echo VRT_DHCP_OK; else echo VRT_DHCP_FAIL; exit 1; fi
if vrg_wait_ping 10.1.1.11 90; then echo VRT_PING_OK; else echo VRT_PING_FAIL; exit 1; fi
# Host -> guest TCP (the guest receives GSO frames through the AF_PACKET port).
rx() { wc -c < /tmp/rx; }
: > /tmp/rx
nc -l -p 5001 > /tmp/rx &
echo VRT_LISTENING
i=0; while [ $i -lt 100 ] && [ "$(rx)" -lt 4194304 ]; do sleep 0.2; i=$((i+1)); done
echo "VRT_RX=$(rx)"
# Guest -> host TCP (the guest's TSO super-frames arrive with a vnet header).
dd if=/dev/zero bs=1024 count=4096 2>/dev/null | nc 10.1.1.11 5002
echo VRT_TX_DONE
"#;
    let log = qemu_guest(&mut lab, "q1", &qtap, guest_mac, script, None);
    let cfg = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "dhcp_range = [\"10.1.1.100\", \"10.1.1.199\"]\nmtu = 1500\n"),
        cfg::port("a1", "web", "tap", &lab.name("a1"), "52:54:00:20:01:11", "ip = \"10.1.1.11\""),
        cfg::port("vm", "web", "netdev", &qtap, guest_mac, "ip = \"10.1.1.50\""),
    ]
    .concat();
    lab.vrouter(&cfg);
    let a1 = lab.guest("n1", &lab.name("a1"), "10.1.1.11/24");
    // Receive the guest's 4 MiB on a1 (python: count bytes until EOF).
    let rxfile = lab.path("rx-count");
    let server = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('10.1.1.11',5002))\ns.listen(1)\nc,_=s.accept()\nn=0\nwhile True:\n  b=c.recv(65536)\n  if not b: break\n  n+=len(b)\nopen('{}','w').write(str(n))\n",
        rxfile.display()
    );
    lab.spawn_in(&a1, &["python3", "-c", &server], &lab.path("py-server.log"));

    let console = wait_marker(&log, "VRT_PING_OK", 120);
    assert!(console.contains("VRT_LEASE=10.1.1.50 router=10.1.1.1 mtu=1500"), "the VM's lease through virtio: {console}");
    assert!(lab.ping(&a1, "10.1.1.50", 10), "namespace guest -> QEMU guest");
    wait_marker(&log, "VRT_LISTENING", 30);
    std::thread::sleep(Duration::from_millis(300));
    let send = "import socket\nc=socket.create_connection(('10.1.1.50',5001),timeout=30)\nc.sendall(b'x'*4194304)\nc.close()\n";
    let o = lab.exec(&a1, &["python3", "-c", send]);
    assert!(o.status.success(), "send to guest: {}", String::from_utf8_lossy(&o.stderr));
    let console = wait_marker(&log, "VRT_TX_DONE", 120);
    assert!(console.contains("VRT_RX=4194304"), "guest received everything: {console}");
    wait_for("python server result", Duration::from_secs(20), || rxfile.exists());
    assert_eq!(std::fs::read_to_string(&rxfile).unwrap(), "4194304", "a1 received the guest's 4 MiB");

    let ports = lab.show("ports");
    let vm = ports.as_array().unwrap().iter().find(|p| p["name"] == "vm").unwrap().clone();
    assert_eq!(vm["kind"], "netdev");
    assert!(vm["rx_frames"].as_u64().unwrap() > 0 && vm["tx_frames"].as_u64().unwrap() > 0);
    assert_eq!(vm["offload"], true, "PACKET_VNET_HDR on the QEMU tap");
    // The guest's virtio-net TSO super-frames arrived whole through AF_PACKET.
    let st = lab.show("stats");
    let vms = st["ports"].as_array().unwrap().iter().find(|p| p["name"] == "vm").unwrap();
    assert!(vms["rx_gso_frames"].as_u64().unwrap() > 0, "{vms}");
    assert_eq!(st["totals"]["tx_sw_segmented"], 0);

    // The VM powers off and QEMU deletes its tap: vrouter says so and keeps serving the rest.
    wait_marker(&log, "VRGUEST_DONE", 60);
    wait_for("vrouter to notice the lost tap", Duration::from_secs(20), || {
        lab.log().lines().any(|l| l.contains("WARN") && l.contains("port=vm"))
    });
    // The port stays configured, waiting for the VM's tap to come back (tests/reattach.rs
    // covers the return).
    let ports = lab.show("ports");
    let vmp = ports.as_array().unwrap().iter().find(|p| p["name"] == "vm").unwrap();
    assert_eq!(vmp["state"], "waiting", "{vmp}");
    assert!(lab.vrouter_alive());
    lab.show("ports");
    eprintln!("netdev port: {vm}");
}

#[test]
fn qemu_guest_trunk_reaches_matching_vlans_only() {
    let mut lab = Lab::new("t");
    let qtap = lab.name("qt");
    let script = r#"
. /lib/vrguest.sh
vrg_vlan_add eth0 101 && vrg_addr eth0.101 10.1.1.50/24
vrg_vlan_add eth0 102 && vrg_addr eth0.102 10.1.2.50/24
vrg_vlan_add eth0 103 && vrg_addr eth0.103 10.1.3.50/24
if vrg_wait_ping 10.1.1.11 90; then echo VRT_V101_OK; else echo VRT_V101_FAIL; fi
if vrg_wait_ping 10.1.2.11 10; then echo VRT_V102_OK; else echo VRT_V102_FAIL; fi
if vrg_wait_ping 10.1.3.11 3; then echo VRT_V103_REACHED; else echo VRT_V103_BLOCKED; fi
# Routed: ops is on no VLAN of the trunk; eth0.101 reaches it through web's gateway.
ip route add 10.1.4.0/24 via 10.1.1.1 dev eth0.101
if vrg_wait_ping 10.1.4.11 10; then echo VRT_ROUTED_OK; else echo VRT_ROUTED_FAIL; fi
# A lease through the trunk: db's DHCP answers on VLAN 102, tagged both ways.
cat > /tmp/udhcpc.sh <<'EOS'
#!/bin/sh
[ "$1" = bound ] && echo "VRT_TRUNK_LEASE=$ip router=$router"
exit 0
EOS
chmod +x /tmp/udhcpc.sh
busybox udhcpc -i eth0.102 -n -q -t 10 -T 2 -s /tmp/udhcpc.sh || echo VRT_TRUNK_DHCP_FAIL
echo VRT_CHECKS_DONE
sleep 8
"#;
    let log = qemu_guest(&mut lab, "t1", &qtap, "52:54:00:30:01:50", script, None);
    let cfg = [
        cfg::router(&lab.id),
        cfg::l3_network("web", "10.1.1.0/24", "10.1.1.1", "vlan = 101\n"),
        cfg::l3_network("db", "10.1.2.0/24", "10.1.2.1", "vlan = 102\ndhcp_range = [\"10.1.2.100\", \"10.1.2.199\"]\n"),
        cfg::l3_network("app", "10.1.3.0/24", "10.1.3.1", "vlan = 103\n"),
        cfg::l3_network("ops", "10.1.4.0/24", "10.1.4.1", ""),
        cfg::port("web1", "web", "tap", &lab.name("w"), "52:54:00:30:01:11", ""),
        cfg::port("db1", "db", "tap", &lab.name("d"), "52:54:00:30:02:11", "ip = \"10.1.2.11\""),
        cfg::port("app1", "app", "tap", &lab.name("a"), "52:54:00:30:03:11", ""),
        cfg::port("ops1", "ops", "tap", &lab.name("o"), "52:54:00:30:04:11", ""),
        format!("[[uplink]]\nname = \"trunk0\"\nkind = \"netdev\"\nifname = \"{qtap}\"\nnetworks = [\"web\", \"db\"]\n"),
    ]
    .concat();
    lab.vrouter(&cfg);
    let web = lab.guest("n1", &lab.name("w"), "10.1.1.11/24");
    let db = lab.guest("n2", &lab.name("d"), "10.1.2.11/24");
    let app = lab.guest("n3", &lab.name("a"), "10.1.3.11/24");
    let ops = lab.guest("n4", &lab.name("o"), "10.1.4.11/24");
    ok(&["ip", "-n", &ops, "route", "add", "default", "via", "10.1.4.1"]);
    let pcap = lab.path("app.pcap");
    let td = lab.spawn_in(&app, &["tcpdump", "--immediate-mode", "-i", &lab.name("a"), "-n", "-U", "-w", pcap.to_str().unwrap()], &lab.path("td.log"));
    // db's NIC too: the cross-network attempt below is judged by what arrives there.
    let db_pcap = lab.path("db.pcap");
    let td_db = lab.spawn_in(&db, &["tcpdump", "--immediate-mode", "-i", &lab.name("d"), "-n", "-e", "-U", "-w", db_pcap.to_str().unwrap()], &lab.path("td-db.log"));
    for p in [&pcap, &db_pcap] {
        wait_for("tcpdump", Duration::from_secs(10), || std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
    }

    let console = wait_marker(&log, "VRT_CHECKS_DONE", 150);
    assert!(console.contains("VRT_V101_OK"), "web via eth0.101: {console}");
    assert!(console.contains("VRT_V102_OK"), "db via eth0.102: {console}");
    assert!(console.contains("VRT_V103_BLOCKED"), "app is not on the trunk: {console}");
    assert!(console.contains("VRT_ROUTED_OK"), "the VM's eth0.101 reaches ops through the router: {console}");
    assert!(console.contains("VRT_TRUNK_LEASE=10.1.2.100 router=10.1.2.1"), "a lease over VLAN 102: {console}");
    // From the namespaces, through the trunk to the guest's sub-interfaces.
    assert!(lab.ping(&web, "10.1.1.50", 5));
    assert!(lab.ping(&db, "10.1.2.50", 5));
    // Cross-network with the trunk in the path: web's guest aims straight at db's guest (static
    // neighbour entry for its MAC, host route out of its NIC). Judged on db's NIC, where none of
    // those frames may arrive (a ping would prove nothing: db's guest has no route back). The
    // positive control: the same capture saw the VM's frames on VLAN 102 (its ping to db).
    let wif = lab.name("w");
    ok(&["ip", "-n", &web, "route", "add", "10.1.2.11/32", "dev", &wif]);
    ok(&["ip", "-n", &web, "neigh", "replace", "10.1.2.11", "lladdr", "52:54:00:30:02:11", "dev", &wif]);
    let _ = lab.exec(&web, &["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.1.2.11"]);
    std::thread::sleep(Duration::from_millis(300));
    lab.interrupt(td_db);
    let db_read = |filter: &str| String::from_utf8_lossy(&run(&["tcpdump", "-n", "-e", "-r", db_pcap.to_str().unwrap(), filter]).stdout).lines().count();
    assert!(db_read("ether src 52:54:00:30:01:50") > 0, "positive control: the VM's VLAN 102 frames reached db");
    assert_eq!(db_read("ether src 52:54:00:30:01:11"), 0, "a web frame reached db's NIC");
    lab.interrupt(td);
    let o = run(&["tcpdump", "-n", "-e", "-r", pcap.to_str().unwrap(), "ether src 52:54:00:30:01:50"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 0, "a trunk frame reached app");
    assert!(lab.drops("trunk0", "unknown_vlan") > 0, "VLAN 103 frames are dropped and counted: {}", lab.show("stats"));
    let _ = db;
}
