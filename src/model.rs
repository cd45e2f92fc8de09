//! Fitted models and the bundle that carries them.

pub mod bundle;
pub mod delta;
pub mod linear;
