//! Snapshots of a microVM: its state in a checksummed, versioned file
//! ([`format`]), its memory in a file of its own.

pub mod format;
