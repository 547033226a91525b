//! The program around the library: the command line ([`cli`]), the wiring of `serve`
//! ([`serve`]) and the supervision of its tasks ([`supervisor`]). Nothing below `app`
//! depends on it.

pub mod cli;
pub mod serve;
pub mod supervisor;
