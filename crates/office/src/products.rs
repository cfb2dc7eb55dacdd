//! Card products and their versioned personalization profiles (being written).
