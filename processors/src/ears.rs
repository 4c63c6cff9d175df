//! EARS outbreak detection (C1, C2, C3) on daily counts.
