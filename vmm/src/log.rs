//! Debug messages, shown when `$SYSTEMD_LOG_LEVEL` is `debug` (or `7`), as in systemd's tools.
//!
//! Only for what a user debugging a guest wants to see and a normal run must not print: guest
//! messages that were dropped, best-effort steps that failed. Errors go through `Error`.

use std::sync::OnceLock;

/// Whether debug messages are shown; read once.
pub fn debug_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SYSTEMD_LOG_LEVEL").is_ok_and(|v| v == "debug" || v == "7"))
}

/// Print a debug line on stderr. `\r\n`, because the terminal may be in raw mode.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            eprint!("{}\r\n", format_args!($($arg)*));
        }
    };
}
