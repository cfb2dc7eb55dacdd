//! An in-process card whose EEPROM lives in an image file.
//!
//! [`ImageCard`] powers the card up from the file, and after every command that changed the
//! EEPROM it saves the image atomically before handing the response back: what the terminal
//! saw answered is on disk. Volatile card state (selected files, security states) lives as long
//! as the `ImageCard`, like a card left in a powered reader.

use crate::{load_image, save_image, CardChannel, LinkError};
use iccard_cos::nvm::SimEeprom;
use iccard_cos::{Card, RandomSource};
use std::path::{Path, PathBuf};

/// The operating system's random generator, for cards running on the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&mut self, buf: &mut [u8]) {
        // The OS generator failing is not recoverable for a card: nothing safe can continue.
        getrandom::fill(buf).expect("the operating system's random generator failed");
    }
}

/// A card image file, powered up in this process.
pub struct ImageCard {
    path: PathBuf,
    card: Card<SimEeprom, OsRandom>,
    saved_writes: u64,
}

impl ImageCard {
    /// Powers up the card stored in `path`.
    pub fn open(path: &Path) -> Result<Self, LinkError> {
        let eeprom = load_image(path)?;
        let card = Card::power_on(eeprom, OsRandom)?;
        let mut opened = Self {
            path: path.to_path_buf(),
            card,
            saved_writes: 0,
        };
        // Power-up may write (journal recovery, a self-destruct's scrub finished): keep it.
        opened.save_if_changed()?;
        Ok(opened)
    }

    /// The card itself (for inspection).
    pub fn card(&self) -> &Card<SimEeprom, OsRandom> {
        &self.card
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn save_if_changed(&mut self) -> Result<(), LinkError> {
        let writes = self.card.nvm().stats().physical_writes;
        if writes != self.saved_writes {
            save_image(&self.path, self.card.nvm().eeprom())?;
            self.saved_writes = writes;
        }
        Ok(())
    }
}

impl CardChannel for ImageCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        let response = self.card.process(apdu);
        self.save_if_changed()?;
        Ok(response)
    }

    fn reset(&mut self) -> Result<Vec<u8>, LinkError> {
        Ok(self.card.reset())
    }
}
