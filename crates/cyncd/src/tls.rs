//! TLS for device connections (being written).
