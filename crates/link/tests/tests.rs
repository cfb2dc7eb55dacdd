//! Integration tests of iccard-link: image files and the in-process card.

mod image_card;
mod vpcd_protocol;
