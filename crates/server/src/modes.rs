//! The registered modes, one module each.

pub mod crc_tcp;
pub mod socks5;
