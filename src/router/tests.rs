//! Router tests on virtual time.
