//! The inventory: the operator's description of the fleet.
