//! Manufacture: chip lots, production batches through their stages, card inventory (being written).
