//! The Lua scripts, each an atomic check-and-record on the server. They sit
//! beside this file (`lua/*.lua`) so that they can be read and tested on
//! their own; redis-rs loads each once and runs it by hash.

use std::sync::OnceLock;

use redis::Script;

/// Strikes against a key; starts and publishes a shared cool-off.
pub(crate) fn strike() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::new(include_str!("lua/strike.lua")))
}

/// CPU time against a key's quota window; publishes a spent quota.
pub(crate) fn usage() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::new(include_str!("lua/usage.lua")))
}

/// One GCRA check-and-record.
pub(crate) fn gcra() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::new(include_str!("lua/gcra.lua")))
}
