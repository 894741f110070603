//! How the engine works (documentation only; this module has no code).
//!
//! (Written in full in a later commit.)
