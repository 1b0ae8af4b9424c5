//! The `fedid` command.

fn main() {}
