//! What fedid hands to CI pods: the output Secret, and the tokens inside it.

pub mod secret;
pub mod token;
