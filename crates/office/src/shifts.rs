//! Cashier shifts (helper's work in progress).
