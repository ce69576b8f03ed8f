//! The system's clock, defined once in `kopilka-notify` (which the server depends on) so the
//! server and the notification dispatcher read the same `Clock`.

pub use kopilka_notify::clock::{Clock, ManualClock, SystemClock};
