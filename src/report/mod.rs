//! The reporter: the only part of cmfleet that prints while a run is going on.
