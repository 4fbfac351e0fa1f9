//! The conformance suite every backend runs (scaffold, being written).
