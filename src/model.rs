//! Fitted models and the bundle that carries them.

pub mod bundle;
pub mod linear;
