//! A real BIND 9 (`named`) started per test on a free loopback port.
