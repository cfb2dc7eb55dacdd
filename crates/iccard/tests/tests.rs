//! The one integration-test binary of the iccard command line.

mod cli_crypto;
mod cli_terminal;
