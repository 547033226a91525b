//! The program around the library: the command line ([`cli`]), the wiring of `serve`
//! ([`serve`]), the supervision of its tasks ([`supervisor`]) and the `bench` command
//! ([`bench`]). Errors here are `anyhow`'s; the library's modules have their own. Nothing
//! below `app` depends on it.

pub mod bench;
pub mod cli;
pub mod serve;
pub mod supervisor;
