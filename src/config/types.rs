//! Value types that appear in the config file and parse themselves from strings: IPv4 networks,
//! interface addresses, port ranges. Each rejects malformed text with a message that says what
//! was expected, so a serde error already reads well.

use core::fmt;
use core::str::FromStr;
use serde::{Deserialize, Deserializer, Serialize};
use std::net::Ipv4Addr;

/// An IPv4 network `a.b.c.d/len` whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    pub fn overlaps(&self, o: &Ipv4Net) -> bool {
        self.contains(o.addr) || o.contains(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn split_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not in a.b.c.d/len form"))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let prefix: u8 = p.parse().map_err(|_| format!("prefix {p:?} is not a number 0-32"))?;
    if prefix > 32 {
        return Err(format!("prefix /{prefix} is longer than 32"));
    }
    Ok((addr, prefix))
}

impl FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = split_prefix(s)?;
        let n = Ipv4Net { addr, prefix };
        if u32::from(addr) & !n.mask() != 0 {
            let fixed = Ipv4Net { addr: Ipv4Addr::from(u32::from(addr) & n.mask()), prefix };
            return Err(format!("{s:?} has host bits set (did you mean {fixed}?)"));
        }
        Ok(n)
    }
}

/// An interface address `a.b.c.d/len` (host bits allowed): the address and its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Iface {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Iface {
    pub fn network(&self) -> Ipv4Net {
        let n = Ipv4Net { addr: self.addr, prefix: self.prefix };
        Ipv4Net { addr: Ipv4Addr::from(u32::from(self.addr) & n.mask()), prefix: self.prefix }
    }
}

impl fmt::Display for Ipv4Iface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Iface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = split_prefix(s)?;
        Ok(Ipv4Iface { addr, prefix })
    }
}

/// A TCP/UDP port or an inclusive range `lo-hi`, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// How many ports the range holds (at least one).
    pub fn count(&self) -> u32 {
        self.hi as u32 - self.lo as u32 + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let one = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("{p:?} is not a port number 1-65535")),
                Ok(v) => Ok(v),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (one(a)?, one(b)?),
            None => {
                let v = one(s)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(format!("range {s:?} runs backwards ({lo} > {hi})"));
        }
        Ok(PortRange { lo, hi })
    }
}

macro_rules! serde_via_str {
    ($t:ty, $expect:literal) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expect)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse().map_err(E::custom)
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<$t, E> {
                        self.visit_str(&v.to_string())
                    }
                }
                d.deserialize_any(V)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_via_str!(Ipv4Net, "an IPv4 network like \"10.1.1.0/24\"");
serde_via_str!(Ipv4Iface, "an interface address like \"203.0.113.10/24\"");
serde_via_str!(PortRange, "a port like \"22\" or a range like \"8000-8010\"");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets() {
        let n: Ipv4Net = "10.1.1.0/24".parse().unwrap();
        assert!(n.contains("10.1.1.200".parse().unwrap()));
        assert!(!n.contains("10.1.2.1".parse().unwrap()));
        assert_eq!(n.broadcast().to_string(), "10.1.1.255");
        assert!("10.1.1.5/24".parse::<Ipv4Net>().unwrap_err().contains("10.1.1.0/24"));
        assert!("10.1.1.0/33".parse::<Ipv4Net>().is_err());
        assert!("0.0.0.0/0".parse::<Ipv4Net>().unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn ranges() {
        assert_eq!("8000-8010".parse::<PortRange>().unwrap().count(), 11);
        assert!("0".parse::<PortRange>().is_err());
        assert!("10-5".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }
}
