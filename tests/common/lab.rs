//! A lab per test, on its own 127.x.y.0/24, torn down on drop.
