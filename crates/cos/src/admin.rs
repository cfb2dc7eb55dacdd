//! Issuer commands: GET DATA (chip production data), APPLICATION BLOCK / UNBLOCK, CARD BLOCK,
//! SET STATUS (GlobalPlatform life cycle), TERMINATE DF and TERMINATE CARD USAGE.

use crate::card::Card;
use crate::command::{has_mac, StatusScope};
use crate::fs::{app_state, lcs, CardResult, CardState, ChipData, Header};
use crate::nvm::Eeprom;
use crate::platform::RandomSource;
use iccard_apdu::{tlv, Command as Apdu, Response, StatusWord};

/// GET DATA tag of the chip production data (CPLC-like, project-defined content):
/// chip maker (2) ‖ chip serial (8) ‖ production date YYYYMMDD BCD (4) ‖ batch (2) ‖ OS version (2).
pub const TAG_CHIP_DATA: u16 = 0x9F7F;
/// GET DATA tag of the card life-cycle state (GP code) and the attack counter.
pub const TAG_CARD_STATE: u16 = 0x9F70;

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    pub(crate) fn get_data(&mut self, tag: u16) -> CardResult<Response> {
        match tag {
            TAG_CHIP_DATA => Ok(Response::ok(tlv::encode(
                tag as u32,
                &self.header.chip.to_bytes()[..ChipData::LEN],
            ))),
            TAG_CARD_STATE => Ok(Response::ok(tlv::encode(
                tag as u32,
                &[self.header.state as u8, self.header.attack_counter],
            ))),
            _ => Err(StatusWord::REFERENCE_DATA_NOT_FOUND),
        }
    }

    /// MAC check with the current DF's maintenance key: required for block commands.
    fn require_maintenance_mac(&mut self, apdu: &Apdu) -> CardResult<()> {
        if !has_mac(apdu) {
            return Err(StatusWord::SM_DATA_MISSING);
        }
        let key = self.maintenance_key(self.v.current_df)?;
        let payload = self.verify_command_mac(apdu, &key)?;
        if !payload.is_empty() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        Ok(())
    }

    fn set_app_state(&mut self, state: u8) -> CardResult<()> {
        let mut df = self.current_df()?;
        df.app_state = state;
        self.table.put(&mut self.nvm, &df)
    }

    pub(crate) fn application_block(
        &mut self,
        apdu: &Apdu,
        permanent: bool,
    ) -> CardResult<Response> {
        if self.current_df()?.is_mf() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.require_maintenance_mac(apdu)?;
        self.set_app_state(if permanent {
            app_state::LOCKED_PERMANENTLY
        } else {
            app_state::LOCKED
        })?;
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn application_unblock(&mut self, apdu: &Apdu) -> CardResult<Response> {
        if self.current_df()?.app_state != app_state::LOCKED {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.require_maintenance_mac(apdu)?;
        self.set_app_state(app_state::PERSONALIZED)?;
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn card_block(&mut self, apdu: &Apdu) -> CardResult<Response> {
        if self.header.state != CardState::Secured {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        self.require_maintenance_mac(apdu)?;
        Header::set_state(&mut self.nvm, CardState::CardLocked)?;
        self.header.state = CardState::CardLocked;
        Ok(Response::sw(StatusWord::OK))
    }

    /// Whether the holder of the current DF's management rights (its delete/manage condition,
    /// judged on the state of the DF that manages it) is authenticated.
    fn manager_authenticated(&self) -> CardResult<bool> {
        let df = self.current_df()?;
        let authority = self.managing_df(df.index)?;
        Ok(df.ac_delete.allows(self.security_of(authority)))
    }

    pub(crate) fn set_status(&mut self, scope: StatusScope, code: u8) -> CardResult<Response> {
        match scope {
            StatusScope::Card => {
                if self.v.current_df != 0 {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                if !self.manager_authenticated()? {
                    return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
                }
                let target = CardState::from_code(code).ok_or(StatusWord::INCORRECT_P1P2)?;
                use CardState as S;
                let allowed = matches!(
                    (self.header.state, target),
                    (S::OpReady, S::Initialized)
                        | (S::OpReady, S::Secured)
                        | (S::Initialized, S::Secured)
                        | (S::Secured, S::CardLocked)
                        | (S::CardLocked, S::Secured)
                );
                if target == S::Terminated {
                    // As TERMINATE CARD USAGE.
                    self.self_destruct()?;
                } else if !allowed {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                } else {
                    Header::set_state(&mut self.nvm, target)?;
                    self.header.state = target;
                }
            }
            StatusScope::Application => {
                let df = self.current_df()?;
                if df.is_mf() {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                if !self.manager_authenticated()? {
                    return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
                }
                use app_state as A;
                let allowed = matches!(
                    (df.app_state, code),
                    (A::INSTALLED, A::SELECTABLE)
                        | (A::SELECTABLE, A::PERSONALIZED)
                        | (A::PERSONALIZED, A::LOCKED)
                        | (A::LOCKED, A::PERSONALIZED)
                        | (_, A::LOCKED_PERMANENTLY)
                );
                if ![
                    A::INSTALLED,
                    A::SELECTABLE,
                    A::PERSONALIZED,
                    A::LOCKED,
                    A::LOCKED_PERMANENTLY,
                ]
                .contains(&code)
                {
                    return Err(StatusWord::INCORRECT_P1P2);
                }
                if !allowed {
                    return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
                }
                self.set_app_state(code)?;
            }
        }
        Ok(Response::sw(StatusWord::OK))
    }

    /// TERMINATE DF (ISO 7816-9 §8): the current DF enters the termination state for good;
    /// under secure messaging (maintenance key) or with the DF's management rights.
    pub(crate) fn terminate_df(&mut self, apdu: &Apdu) -> CardResult<Response> {
        let mut df = self.current_df()?;
        if df.is_mf() {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if has_mac(apdu) {
            self.require_maintenance_mac(apdu)?;
        } else if !self.manager_authenticated()? {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        } else if !apdu.data.is_empty() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        df.lcs = lcs::TERMINATED;
        self.table.put(&mut self.nvm, &df)?;
        Ok(Response::sw(StatusWord::OK))
    }

    /// TERMINATE CARD USAGE (ISO 7816-9 §8): irreversible; the card erases its secrets and
    /// answers only identification commands from then on.
    pub(crate) fn terminate_card(&mut self, apdu: &Apdu) -> CardResult<Response> {
        if self.v.current_df != 0 {
            return Err(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        if has_mac(apdu) {
            self.require_maintenance_mac(apdu)?;
        } else if !self.manager_authenticated()? {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        } else if !apdu.data.is_empty() {
            return Err(StatusWord::WRONG_LENGTH);
        }
        self.self_destruct()?;
        Ok(Response::sw(StatusWord::OK))
    }
}
