//! The `palisade-migrate` command-line tool (feature `cli`).

fn main() {}
