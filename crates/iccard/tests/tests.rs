//! The one integration-test binary of the iccard command line.

mod cli_card;
mod cli_crypto;
mod cli_lifecycle;
mod cli_office;
mod cli_pos;
mod cli_settle;
mod cli_shift;
mod cli_terminal;
mod office_support;
mod pcsc_clients;
mod pcsc_env;
mod pcsc_office;
mod pcsc_serve;
mod pcsc_terminal;
