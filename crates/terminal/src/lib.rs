//! # iccard-terminal: recharge and purchase flows (being written)
