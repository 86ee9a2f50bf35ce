//! Where accepted frames go: [`file::FileSink`] appends them to a file,
//! [`nats`] publishes them to NATS JetStream.

pub mod file;
pub mod nats;
