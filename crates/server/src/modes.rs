//! The registered modes, one module each.

pub mod crc_tcp;
pub mod doors;
pub mod http;
pub mod socks5;
