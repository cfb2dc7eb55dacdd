//! Manufacture, products and inventory on both databases (being written).
