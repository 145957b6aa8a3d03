//! Behaviour tests of the engine through its public surface, one module per
//! stage: intake, SQL, variables, plugins, loads and limits. One binary, so
//! the engine links once.

mod intake;
mod limits;
mod loads;
mod plugins;
mod sql;
mod variables;
