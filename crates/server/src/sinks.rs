//! Where accepted frames go: [`file::FileSink`] appends them to a file.

pub mod file;
