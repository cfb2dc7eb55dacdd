//! NVM integration tests.
