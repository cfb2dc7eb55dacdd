//! File commands: SELECT, READ/UPDATE BINARY, READ/UPDATE/APPEND RECORD, CREATE FILE, ERASE DF,
//! and the FCP/FCI templates SELECT answers (ISO/IEC 7816-4 §5.3.3, §7; 7816-9 for CREATE FILE).

use crate::card::Card;
use crate::command::{has_mac, EfRef, RecordRef, SelectAnswer, SelectBy};
use crate::fs::{
    app_state, flags, lcs, nv, Access, AppKind, CardResult, Fcb, FileKind, Header, MAX_DF_NAME,
    MF_FID, NO_PARENT,
};
use crate::keys::KEY_RECORD_LEN;
use crate::nvm::{Eeprom, Nvm};
use crate::platform::RandomSource;
use iccard_apdu::tlv;
use iccard_apdu::{Command as Apdu, Response, StatusWord};

/// Proprietary FCP tag carrying the access conditions and flags:
/// `read update append/create delete flags` (ISO 7816-4 tag 86, "security attribute in
/// proprietary format").
pub const TAG_SECURITY: u32 = 0x86;
/// Proprietary FCP tag carrying the application kind of a DF.
pub const TAG_APP_KIND: u32 = 0xC0;
/// Largest zeroing step, well inside one journal transaction.
const ZERO_STEP: usize = 512;

impl<E: Eeprom, R: RandomSource> Card<E, R> {
    pub(crate) fn select(&mut self, by: SelectBy, answer: SelectAnswer) -> CardResult<Response> {
        let nvm = &self.nvm;
        let t = &self.table;
        let cur = self.v.current_df;
        let found: Option<Fcb> = match &by {
            SelectBy::Mf => Some(t.mf(nvm)?),
            SelectBy::Fid(fid) => {
                // ISO 7816-4 §7.1.1: a child of the current DF, the current DF itself, its
                // parent, or a sibling of the current DF.
                let here = t.load(nvm, cur)?;
                match t.child_by_fid(nvm, cur, *fid)? {
                    Some(f) => Some(f),
                    None if here.fid == *fid => Some(here),
                    None if here.parent != NO_PARENT => {
                        let parent = t.load(nvm, here.parent)?;
                        if parent.fid == *fid {
                            Some(parent)
                        } else {
                            t.child_by_fid(nvm, parent.index, *fid)?
                                .filter(|f| f.is_df())
                        }
                    }
                    None => None,
                }
            }
            SelectBy::ChildDf(fid) => t.child_by_fid(nvm, cur, *fid)?.filter(|f| f.is_df()),
            SelectBy::ChildEf(fid) => t.child_by_fid(nvm, cur, *fid)?.filter(|f| !f.is_df()),
            SelectBy::Parent => {
                let here = t.load(nvm, cur)?;
                if here.parent == NO_PARENT {
                    None
                } else {
                    Some(t.load(nvm, here.parent)?)
                }
            }
            SelectBy::Name(name) => t.df_by_name(nvm, name)?,
            SelectBy::PathFromMf(path) => {
                let path = match path.first() {
                    Some(&MF_FID) => &path[1..],
                    _ => &path[..],
                };
                self.walk(0, path)?
            }
            SelectBy::PathFromCurrent(path) => self.walk(cur, path)?,
        };
        let target = found
            .filter(|f| !f.kind.is_internal())
            .ok_or(StatusWord::FILE_NOT_FOUND)?;
        if self.header.state == crate::fs::CardState::CardLocked && target.index != 0 {
            return Err(StatusWord::FUNCTION_NOT_SUPPORTED);
        }
        if target.is_df() {
            self.enter_df(target.index)?;
        } else {
            self.enter_df(target.parent)?;
            self.v.current_ef = Some(target.index);
        }
        let sw = if target.lcs == lcs::TERMINATED {
            StatusWord::FILE_TERMINATED
        } else if target.is_df() && target.app_state == app_state::LOCKED_PERMANENTLY {
            StatusWord::APPLICATION_LOCKED_PERMANENTLY
        } else if target.is_df() && target.app_state == app_state::LOCKED {
            StatusWord::SELECTED_FILE_DEACTIVATED
        } else {
            StatusWord::OK
        };
        // 9303 is an error: it comes without data (the warnings 6283 and 6285 keep theirs).
        let data = match answer {
            _ if sw == StatusWord::APPLICATION_LOCKED_PERMANENTLY => Vec::new(),
            SelectAnswer::Nothing => Vec::new(),
            SelectAnswer::Fcp => self.fcp(&target)?,
            SelectAnswer::Fci => self.fci(&target)?,
        };
        Ok(Response::new(data, sw))
    }

    fn walk(&self, from: u8, path: &[u16]) -> CardResult<Option<Fcb>> {
        if path.is_empty() {
            return Ok(Some(self.table.load(&self.nvm, from)?));
        }
        let mut at = from;
        let mut found = None;
        for (i, fid) in path.iter().enumerate() {
            let f = match self.table.child_by_fid(&self.nvm, at, *fid)? {
                Some(f) => f,
                None => return Ok(None),
            };
            if i + 1 < path.len() && !f.is_df() {
                return Ok(None);
            }
            at = f.index;
            found = Some(f);
        }
        Ok(found)
    }

    /// The FCP template (tag 62) of a file.
    pub(crate) fn fcp(&self, f: &Fcb) -> CardResult<Vec<u8>> {
        Ok(tlv::encode(0x62, &self.fcp_body(f)?))
    }

    fn fcp_body(&self, f: &Fcb) -> CardResult<Vec<u8>> {
        let mut b = Vec::new();
        match f.kind {
            FileKind::Df => {
                tlv::encode_into(&mut b, 0x82, &[0x38]);
                tlv::encode_into(&mut b, 0x83, &f.fid.to_be_bytes());
                if !f.name.is_empty() {
                    tlv::encode_into(&mut b, 0x84, &f.name);
                }
                if f.parent == NO_PARENT {
                    // Free memory on the card (proprietary information in 85 would also do).
                    let free = self.table.free_bytes(&self.nvm)?.min(0xFFFF) as u16;
                    tlv::encode_into(&mut b, 0x81, &free.to_be_bytes());
                }
            }
            FileKind::Transparent => {
                tlv::encode_into(&mut b, 0x80, &f.size.to_be_bytes());
                tlv::encode_into(&mut b, 0x82, &[0x01]);
                tlv::encode_into(&mut b, 0x83, &f.fid.to_be_bytes());
            }
            FileKind::LinearFixed | FileKind::Cyclic => {
                tlv::encode_into(
                    &mut b,
                    0x80,
                    &(f.record_len as u16 * f.record_count as u16).to_be_bytes(),
                );
                // FDB, data coding byte, max record size (2 bytes), number of records.
                tlv::encode_into(
                    &mut b,
                    0x82,
                    &[f.kind as u8, 0x21, 0x00, f.record_len, f.record_count],
                );
                tlv::encode_into(&mut b, 0x83, &f.fid.to_be_bytes());
            }
            FileKind::KeyFile | FileKind::Internal => {
                tlv::encode_into(&mut b, 0x82, &[f.kind as u8]);
                tlv::encode_into(&mut b, 0x83, &f.fid.to_be_bytes());
            }
        }
        if f.sfi != 0 {
            tlv::encode_into(&mut b, 0x88, &[f.sfi << 3]);
        }
        tlv::encode_into(&mut b, 0x8A, &[f.lcs]);
        tlv::encode_into(
            &mut b,
            TAG_SECURITY,
            &[
                f.ac_read.0,
                f.ac_update.0,
                f.ac_append.0,
                f.ac_delete.0,
                f.flags,
            ],
        );
        Ok(b)
    }

    /// The FCI template (tag 6F): for a DF its name and proprietary data (A5), for an EF its
    /// FCP data objects.
    pub(crate) fn fci(&self, f: &Fcb) -> CardResult<Vec<u8>> {
        let mut b = Vec::new();
        if f.is_df() {
            if f.name.is_empty() {
                tlv::encode_into(&mut b, 0x83, &f.fid.to_be_bytes());
            } else {
                tlv::encode_into(&mut b, 0x84, &f.name);
            }
            let proprietary = self.fci_proprietary(f)?;
            if !proprietary.is_empty() {
                tlv::encode_into(&mut b, 0xA5, &proprietary);
            }
        } else {
            b = self.fcp_body(f)?;
        }
        Ok(tlv::encode(0x6F, &b))
    }

    /// Resolves an EF reference in the current DF; an SFI reference makes the EF current.
    pub(crate) fn resolve_ef(&mut self, ef: EfRef) -> CardResult<Fcb> {
        match ef {
            EfRef::Current => {
                let idx = self
                    .v
                    .current_ef
                    .ok_or(StatusWord::COMMAND_NOT_ALLOWED_NO_EF)?;
                self.table.load(&self.nvm, idx)
            }
            EfRef::Sfi(sfi) => {
                let f = self
                    .table
                    .child_by_sfi(&self.nvm, self.v.current_df, sfi)?
                    .ok_or(StatusWord::FILE_NOT_FOUND)?;
                if self.v.current_ef != Some(f.index) {
                    self.v.record_ptr = None;
                }
                self.v.current_ef = Some(f.index);
                Ok(f)
            }
        }
    }

    fn check_read(&self, f: &Fcb) -> CardResult<()> {
        if f.lcs == lcs::TERMINATED {
            return Err(StatusWord::FILE_TERMINATED);
        }
        if f.flags & flags::READ_NEEDS_MAC != 0 || !f.ac_read.allows(self.security_of(f.parent)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        Ok(())
    }

    /// Update rights: the access condition, and secure messaging where the file demands it
    /// (the MAC is verified here with the DF's maintenance key).
    fn check_update(&mut self, apdu: &Apdu, f: &Fcb, ac: Access) -> CardResult<Vec<u8>> {
        if f.lcs == lcs::TERMINATED {
            return Err(StatusWord::FILE_TERMINATED);
        }
        if !ac.allows(self.security_of(f.parent)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        if has_mac(apdu) {
            let key = self.maintenance_key(f.parent)?;
            self.verify_command_mac(apdu, &key)
        } else if f.flags & flags::UPDATE_NEEDS_MAC != 0 {
            Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
        } else {
            Ok(apdu.data.clone())
        }
    }

    pub(crate) fn read_binary(
        &mut self,
        ef: EfRef,
        offset: u16,
        ne: usize,
    ) -> CardResult<Response> {
        let f = self.resolve_ef(ef)?;
        Self::check_structure(&f, false)?;
        self.check_read(&f)?;
        let (offset, size) = (offset as usize, f.size as usize);
        if offset >= size {
            return Err(StatusWord::WRONG_P1P2);
        }
        let n = ne.min(size - offset);
        let data = nv(self.nvm.read_vec(f.body as usize + offset, n))?;
        // Le=00 (256) or extended 0000 means "as much as there is": no end-of-file warning then.
        let sw = if n < ne && ne != 256 && ne != 65536 {
            StatusWord::END_OF_FILE
        } else {
            StatusWord::OK
        };
        Ok(Response::new(data, sw))
    }

    pub(crate) fn update_binary(
        &mut self,
        apdu: &Apdu,
        ef: EfRef,
        offset: u16,
        _data: Vec<u8>,
    ) -> CardResult<Response> {
        let f = self.resolve_ef(ef)?;
        Self::check_structure(&f, false)?;
        let data = self.check_update(apdu, &f, f.ac_update)?;
        let (offset, size) = (offset as usize, f.size as usize);
        if offset >= size {
            return Err(StatusWord::WRONG_P1P2);
        }
        if offset + data.len() > size {
            return Err(StatusWord::NOT_ENOUGH_MEMORY);
        }
        nv(self.nvm.write(f.body as usize + offset, &data))?;
        Ok(Response::sw(StatusWord::OK))
    }

    /// Number of records present in a record EF.
    pub(crate) fn records_present(&self, f: &Fcb) -> CardResult<u8> {
        match f.kind {
            FileKind::Cyclic => Ok(cyclic_slots(&self.nvm, f)?
                .iter()
                .filter(|(seq, _)| *seq != 0)
                .count() as u8),
            _ => Ok(f.records_used),
        }
    }

    /// Body address of record `n` (1-based; for cyclic files 1 is the newest).
    pub(crate) fn record_addr(&self, f: &Fcb, n: u8) -> CardResult<usize> {
        let present = self.records_present(f)?;
        if n == 0 || n > present {
            return Err(StatusWord::RECORD_NOT_FOUND);
        }
        match f.kind {
            FileKind::Cyclic => {
                let mut slots = cyclic_slots(&self.nvm, f)?;
                slots.retain(|(seq, _)| *seq != 0);
                slots.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
                Ok(f.body as usize + slots[n as usize - 1].1 * f.slot_len() + 4)
            }
            _ => Ok(f.body as usize + (n as usize - 1) * f.record_len as usize),
        }
    }

    fn resolve_record(&self, f: &Fcb, record: RecordRef) -> CardResult<u8> {
        let present = self.records_present(f)?;
        if present == 0 {
            return Err(StatusWord::RECORD_NOT_FOUND);
        }
        let n = match record {
            RecordRef::Number(n) => n,
            RecordRef::Current => self.v.record_ptr.ok_or(StatusWord::RECORD_NOT_FOUND)?,
            RecordRef::First => 1,
            RecordRef::Last => present,
            RecordRef::Next => self.v.record_ptr.map_or(1, |p| p.saturating_add(1)),
            RecordRef::Previous => match self.v.record_ptr {
                Some(p) => p.saturating_sub(1),
                None => present,
            },
        };
        if n == 0 || n > present {
            return Err(StatusWord::RECORD_NOT_FOUND);
        }
        Ok(n)
    }

    pub(crate) fn read_record(
        &mut self,
        ef: EfRef,
        record: RecordRef,
        ne: Option<usize>,
    ) -> CardResult<Response> {
        let f = self.resolve_ef(ef)?;
        Self::check_structure(&f, true)?;
        self.check_read(&f)?;
        let n = self.resolve_record(&f, record)?;
        let len = f.record_len as usize;
        if let Some(ne) = ne {
            if ne < len {
                // ISO 7816-4 §5.1.3: wrong Le, SW2 gives the exact length.
                return Err(StatusWord::wrong_le(len as u8));
            }
        }
        let data = nv(self.nvm.read_vec(self.record_addr(&f, n)?, len))?;
        self.v.record_ptr = Some(n);
        Ok(Response::ok(data))
    }

    pub(crate) fn update_record(
        &mut self,
        apdu: &Apdu,
        ef: EfRef,
        record: RecordRef,
        _data: Vec<u8>,
    ) -> CardResult<Response> {
        let f = self.resolve_ef(ef)?;
        Self::check_structure(&f, true)?;
        if f.kind == FileKind::Cyclic {
            // A cyclic file only grows by APPEND RECORD: its order is its history.
            return Err(StatusWord::COMMAND_INCOMPATIBLE_WITH_FILE);
        }
        let data = self.check_update(apdu, &f, f.ac_update)?;
        if data.len() != f.record_len as usize {
            return Err(StatusWord::WRONG_LENGTH);
        }
        let n = self.resolve_record(&f, record)?;
        nv(self.nvm.write(self.record_addr(&f, n)?, &data))?;
        self.v.record_ptr = Some(n);
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn append_record(
        &mut self,
        apdu: &Apdu,
        ef: EfRef,
        _data: Vec<u8>,
    ) -> CardResult<Response> {
        let f = self.resolve_ef(ef)?;
        Self::check_structure(&f, true)?;
        let data = self.check_update(apdu, &f, f.ac_append)?;
        if data.len() != f.record_len as usize {
            return Err(StatusWord::WRONG_LENGTH);
        }
        append(&self.table, &mut self.nvm, &f, &data)?;
        // ISO 7816-4: the appended record becomes the current record.
        self.v.record_ptr = Some(if f.kind == FileKind::Cyclic {
            1
        } else {
            f.records_used + 1
        });
        Ok(Response::sw(StatusWord::OK))
    }

    pub(crate) fn create_file(&mut self, fcp: &[u8]) -> CardResult<Response> {
        let parent = self.current_df()?;
        // Rights: the DF's create condition, judged on the state of the DF that manages it
        // (the DF itself once it has a master key; its parent while it is being personalized).
        let authority = self.managing_df(parent.index)?;
        if !parent.ac_append.allows(self.security_of(authority)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        let spec = parse_create(fcp)?;
        let siblings = self.table.children(&self.nvm, parent.index)?;
        if spec.fid == MF_FID || spec.fid == 0xFFFF || siblings.iter().any(|f| f.fid == spec.fid) {
            return Err(StatusWord::FILE_EXISTS);
        }
        if spec.sfi != 0 && siblings.iter().any(|f| f.sfi == spec.sfi) {
            return Err(StatusWord::FILE_EXISTS);
        }
        if spec.kind == FileKind::KeyFile && siblings.iter().any(|f| f.kind == FileKind::KeyFile) {
            return Err(StatusWord::FILE_EXISTS);
        }
        if spec.kind == FileKind::Internal && siblings.iter().any(|f| f.kind == FileKind::Internal)
        {
            return Err(StatusWord::FILE_EXISTS);
        }
        if !spec.name.is_empty()
            && self
                .table
                .df_by_name(&self.nvm, &spec.name)?
                .is_some_and(|f| f.name == spec.name)
        {
            return Err(StatusWord::DF_NAME_EXISTS);
        }
        let index = self.table.free_slot(&self.nvm)?;
        let body = if spec.size > 0 {
            // Cyclic slots are rewritten in turn: page-aligned, each slot of up to a page
            // wears its own page. Everything else packs on 4 bytes.
            let align = if spec.kind == FileKind::Cyclic {
                crate::nvm::PAGE_SIZE
            } else {
                4
            };
            let body = self.table.allocate(&self.nvm, spec.size as usize, align)?;
            // Bodies start zeroed: freed space may hold an old file's bytes. The space is free
            // until the FCB below is committed, so zeroing it first, in journal-sized steps,
            // leaves nothing half-made if power fails in between.
            self.zero_free_space(body as usize, spec.size as usize)?;
            body
        } else {
            0
        };
        let fcb = Fcb {
            index,
            kind: spec.kind,
            fid: spec.fid,
            parent: parent.index,
            sfi: spec.sfi,
            lcs: lcs::ACTIVATED,
            app: spec.app,
            ac_read: spec.ac[0],
            ac_update: spec.ac[1],
            ac_append: spec.ac[2],
            ac_delete: spec.ac[3],
            flags: spec.flags,
            record_len: spec.record_len,
            record_count: spec.record_count,
            records_used: 0,
            size: spec.size,
            body,
            name: spec.name,
            app_state: if spec.kind == FileKind::Df {
                app_state::SELECTABLE
            } else {
                0
            },
        };
        self.table.put(&mut self.nvm, &fcb)?;
        // ISO 7816-9: the created file becomes the current file.
        if fcb.is_df() {
            self.enter_df(index)?;
        } else if !fcb.kind.is_internal() {
            self.v.current_ef = Some(index);
            self.v.record_ptr = None;
        }
        Ok(Response::sw(StatusWord::OK))
    }

    /// Zeroes free heap space in commits of at most [`ZERO_STEP`] bytes. Only for space no FCB
    /// owns, and only with nothing else staged.
    fn zero_free_space(&mut self, addr: usize, len: usize) -> CardResult<()> {
        debug_assert!(!self.nvm.has_staged());
        let mut done = 0;
        while done < len {
            let n = ZERO_STEP.min(len - done);
            nv(self.nvm.write(addr + done, &vec![0u8; n]))?;
            self.commit()?;
            done += n;
        }
        Ok(())
    }

    /// LIST DIRECTORY: the FIDs (2 bytes each, in creation order) of the current DF's DFs or
    /// EFs that SELECT can reach (key files and internal files are left out); `6A82` if none.
    pub(crate) fn list_files(&mut self, dfs: bool) -> CardResult<Response> {
        let fids: Vec<u8> = self
            .table
            .children(&self.nvm, self.v.current_df)?
            .into_iter()
            .filter(|f| f.is_df() == dfs && !f.kind.is_internal())
            .flat_map(|f| f.fid.to_be_bytes())
            .collect();
        if fids.is_empty() {
            return Err(StatusWord::FILE_NOT_FOUND);
        }
        Ok(Response::new(fids, StatusWord::OK))
    }

    pub(crate) fn erase_df(&mut self) -> CardResult<Response> {
        let df = self.current_df()?;
        let authority = self.managing_df(df.index)?;
        if !df.ac_delete.allows(self.security_of(authority)) {
            return Err(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        }
        // A DF's files (key files zeroed) can exceed one journal transaction: the DF is
        // marked in the header first, then swept in as many commits as it takes; the last one
        // clears the mark, and power-up finishes a sweep a power cut interrupted. Either way
        // no command ever sees a half-erased DF, and no deleted key survives.
        Header::set_erasing(&mut self.nvm, Some(df.index))?;
        self.commit()?;
        let removed = self.sweep_erase(df.index)?;
        // The other bodies are free space now; clearing them is hygiene, and CREATE FILE
        // clears again before reuse, so a tear here loses nothing.
        for f in removed
            .iter()
            .filter(|f| f.size > 0 && f.kind != FileKind::KeyFile)
        {
            self.zero_free_space(f.body as usize, f.size as usize)?;
        }
        self.v.current_ef = None;
        self.v.record_ptr = None;
        Ok(Response::sw(StatusWord::OK))
    }

    /// Removes every file below `df` (key files zeroed first), deepest first, committing
    /// whenever the next write would not fit the journal, and clears the ERASE DF mark in the
    /// last commit. Safe to run again after a tear: it starts from what is left.
    pub(crate) fn sweep_erase(&mut self, df: u8) -> CardResult<Vec<Fcb>> {
        let removed = self.table.descendants(&self.nvm, df)?;
        for f in &removed {
            if f.kind == FileKind::KeyFile {
                let (body, size) = (f.body as usize, f.size as usize);
                for at in (0..size).step_by(ZERO_STEP) {
                    let n = ZERO_STEP.min(size - at);
                    self.stage_within_journal(n)?;
                    nv(self.nvm.write(body + at, &vec![0u8; n]))?;
                }
            }
            self.stage_within_journal(crate::fs::FCB_LEN)?;
            self.table.remove(&mut self.nvm, f.index)?;
        }
        self.stage_within_journal(1)?;
        Header::set_erasing(&mut self.nvm, None)?;
        self.commit()?;
        Ok(removed)
    }

    /// Commits what is staged if `len` more bytes would not fit one journal transaction.
    fn stage_within_journal(&mut self, len: usize) -> CardResult<()> {
        use crate::nvm::{MAX_TRANSACTION_BYTES, RANGE_OVERHEAD};
        if self.nvm.staged_journal_bytes() + len + RANGE_OVERHEAD > MAX_TRANSACTION_BYTES {
            self.commit()?;
        }
        Ok(())
    }
}

/// Reads every slot of a cyclic file: (sequence number, slot index).
pub(crate) fn cyclic_slots<E: Eeprom>(nvm: &Nvm<E>, f: &Fcb) -> CardResult<Vec<(u32, usize)>> {
    let raw = nv(nvm.read_vec(f.body as usize, f.size as usize))?;
    Ok(raw
        .chunks_exact(f.slot_len())
        .enumerate()
        .map(|(i, s)| (u32::from_be_bytes([s[0], s[1], s[2], s[3]]), i))
        .collect())
}

/// Stages the append of a record: a linear file fills its next record; a cyclic file
/// overwrites its oldest slot with the next sequence number.
pub(crate) fn append<E: Eeprom>(
    table: &crate::fs::FileTable,
    nvm: &mut Nvm<E>,
    f: &Fcb,
    data: &[u8],
) -> CardResult<()> {
    match f.kind {
        FileKind::Cyclic => {
            let slots = cyclic_slots(nvm, f)?;
            let (newest_seq, newest_slot) = slots
                .iter()
                .copied()
                .max_by_key(|(seq, _)| *seq)
                .unwrap_or((0, usize::MAX));
            let next_slot = if newest_seq == 0 {
                0
            } else {
                (newest_slot + 1) % f.record_count as usize
            };
            let seq = newest_seq
                .checked_add(1)
                .ok_or(StatusWord::MEMORY_FAILURE)?;
            let mut slot = Vec::with_capacity(f.slot_len());
            slot.extend_from_slice(&seq.to_be_bytes());
            slot.extend_from_slice(data);
            nv(nvm.write(f.body as usize + next_slot * f.slot_len(), &slot))
        }
        _ => {
            if f.records_used >= f.record_count {
                return Err(StatusWord::NOT_ENOUGH_MEMORY);
            }
            let addr = f.body as usize + f.records_used as usize * f.record_len as usize;
            nv(nvm.write(addr, data))?;
            let mut updated = f.clone();
            updated.records_used += 1;
            table.put(nvm, &updated)
        }
    }
}

/// A file as CREATE FILE describes it.
struct CreateSpec {
    kind: FileKind,
    fid: u16,
    sfi: u8,
    size: u16,
    record_len: u8,
    record_count: u8,
    name: Vec<u8>,
    ac: [Access; 4],
    flags: u8,
    app: AppKind,
}

/// Parses the FCP template of CREATE FILE: 82 (descriptor), 83 (FID), 84 (DF name), 80 (size),
/// 88 (SFI, b8..b4), 86 (access conditions and flags), C0 (application kind).
fn parse_create(data: &[u8]) -> CardResult<CreateSpec> {
    let bad = StatusWord::NC_INCONSISTENT_WITH_TLV;
    let objects = tlv::parse_all(data).map_err(|_| bad)?;
    let body = match objects.as_slice() {
        [one] if one.tag == 0x62 => one.value,
        _ => data,
    };
    let get = |tag: u32| tlv::find(body, tag);
    tlv::parse_all(body).map_err(|_| bad)?;
    let desc = get(0x82).ok_or(StatusWord::WRONG_DATA)?;
    let kind = FileKind::from_code(*desc.first().ok_or(StatusWord::WRONG_DATA)?)
        .ok_or(StatusWord::WRONG_DATA)?;
    let fid = match get(0x83) {
        Some([a, b]) => u16::from_be_bytes([*a, *b]),
        _ => return Err(StatusWord::WRONG_DATA),
    };
    let sfi = match get(0x88) {
        None | Some([]) => 0,
        Some([s]) if s & 0x07 == 0 && (1..=30).contains(&(s >> 3)) => s >> 3,
        Some(_) => return Err(StatusWord::WRONG_DATA),
    };
    let (ac, flags) = match get(TAG_SECURITY) {
        Some([r, u, a, d, fl]) => ([Access(*r), Access(*u), Access(*a), Access(*d)], *fl),
        Some([r, u, a, d]) => ([Access(*r), Access(*u), Access(*a), Access(*d)], 0),
        None => ([Access::FREE; 4], 0),
        Some(_) => return Err(StatusWord::WRONG_DATA),
    };
    let app = match get(TAG_APP_KIND) {
        None => AppKind::Plain,
        Some([k]) => AppKind::from_code(*k).ok_or(StatusWord::WRONG_DATA)?,
        Some(_) => return Err(StatusWord::WRONG_DATA),
    };
    let name = get(0x84).unwrap_or(&[]).to_vec();
    if name.len() > MAX_DF_NAME || (!name.is_empty() && kind != FileKind::Df) {
        return Err(StatusWord::WRONG_DATA);
    }
    let size_field = match get(0x80) {
        None => None,
        Some([a, b]) => Some(u16::from_be_bytes([*a, *b])),
        Some([a]) => Some(*a as u16),
        Some(_) => return Err(StatusWord::WRONG_DATA),
    };
    let (size, record_len, record_count) = match kind {
        FileKind::Df => (0, 0, 0),
        FileKind::Transparent | FileKind::Internal => {
            let size = size_field.ok_or(StatusWord::WRONG_DATA)?;
            if size == 0 {
                return Err(StatusWord::WRONG_DATA);
            }
            (size, 0, 0)
        }
        FileKind::LinearFixed | FileKind::Cyclic | FileKind::KeyFile => {
            let (len, count) = match desc {
                [_, _, 0, len, count] => (*len, *count),
                [_, _, len, count] => (*len, *count),
                _ => return Err(StatusWord::WRONG_DATA),
            };
            if len == 0 || count == 0 {
                return Err(StatusWord::WRONG_DATA);
            }
            if kind == FileKind::KeyFile && len as usize != KEY_RECORD_LEN {
                return Err(StatusWord::WRONG_DATA);
            }
            let slot = if kind == FileKind::Cyclic {
                len as u32 + 4
            } else {
                len as u32
            };
            let size = u16::try_from(slot * count as u32).map_err(|_| StatusWord::WRONG_DATA)?;
            (size, len, count)
        }
    };
    if kind == FileKind::KeyFile {
        // Nobody reads a key file.
        let mut ac = ac;
        ac[0] = Access::NEVER;
        return Ok(CreateSpec {
            kind,
            fid,
            sfi: 0,
            size,
            record_len,
            record_count,
            name,
            ac,
            flags,
            app,
        });
    }
    Ok(CreateSpec {
        kind,
        fid,
        sfi,
        size,
        record_len,
        record_count,
        name,
        ac,
        flags,
        app,
    })
}
