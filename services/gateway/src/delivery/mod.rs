//! One message to its receivers and onto one socket.

pub mod writer;
