//! The `fedid` command line, one file per subcommand.

pub mod crds;
pub mod issuer;
pub mod plugin;
pub mod run;
pub mod token;
