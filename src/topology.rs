//! Network-namespace topologies (being written).
