//! A minimal reader of sentencepiece's `ModelProto` (the `spm.model` file): only the fields
//! that Hugging Face's `DebertaV2Converter` uses to build a fast tokenizer.
//!
//! Wire format: each field is a varint key `(number << 3) | wire_type`; wire types 0 (varint),
//! 1 (8 bytes), 2 (length-delimited) and 5 (4 bytes) occur in sentencepiece models.

/// The kind of a vocabulary piece (sentencepiece's `SentencePiece.Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_code(code: u64) -> Option<PieceType> {
        Some(match code {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// What the tokenizer builder needs from a sentencepiece model.
#[derive(Clone, Debug, Default)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 is unigram (the only kind DeBERTa-v3 uses).
    pub model_type: u64,
    pub unk_id: usize,
    pub byte_fallback: bool,
    pub precompiled_charsmap: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| format!("truncated varint at byte {}", self.at))?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.at))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("field of {len} bytes runs past the end at byte {}", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// The next field's number and value.
    fn field(&mut self) -> Result<(u64, Value<'a>), String> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint()? as usize;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(self.take(4)?),
            other => return Err(format!("unsupported wire type {other} at byte {}", self.at)),
        };
        Ok((key >> 3, value))
    }
}

enum Value<'a> {
    Varint(u64),
    /// Skipped: no field the tokenizer needs has this wire type.
    Fixed64,
    Fixed32(&'a [u8]),
    Bytes(&'a [u8]),
}

impl SentencePieceModel {
    /// Parses the bytes of an `spm.model` file; the error says what is malformed.
    pub fn parse(bytes: &[u8]) -> Result<SentencePieceModel, String> {
        let mut model = SentencePieceModel {
            model_type: 1,
            ..Default::default()
        };
        let mut reader = Reader::new(bytes);
        while !reader.done() {
            match reader.field()? {
                (1, Value::Bytes(piece)) => model.pieces.push(parse_piece(piece)?),
                (2, Value::Bytes(trainer_spec)) => {
                    let mut spec = Reader::new(trainer_spec);
                    while !spec.done() {
                        match spec.field()? {
                            (3, Value::Varint(kind)) => model.model_type = kind,
                            (35, Value::Varint(flag)) => model.byte_fallback = flag != 0,
                            (40, Value::Varint(id)) => model.unk_id = id as usize,
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(normalizer_spec)) => {
                    let mut spec = Reader::new(normalizer_spec);
                    while !spec.done() {
                        if let (2, Value::Bytes(charsmap)) = spec.field()? {
                            model.precompiled_charsmap = charsmap.to_vec();
                        }
                    }
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("no vocabulary pieces: not a sentencepiece model".into());
        }
        if model.unk_id >= model.pieces.len() {
            return Err(format!(
                "unk_id {} is outside the vocabulary of {} pieces",
                model.unk_id,
                model.pieces.len()
            ));
        }
        Ok(model)
    }
}

fn parse_piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut reader = Reader::new(bytes);
    while !reader.done() {
        match reader.field()? {
            (1, Value::Bytes(text)) => {
                piece.piece = String::from_utf8(text.to_vec())
                    .map_err(|_| "a vocabulary piece is not UTF-8".to_string())?;
            }
            (2, Value::Fixed32(score)) => {
                piece.score = f32::from_le_bytes([score[0], score[1], score[2], score[3]]);
            }
            (3, Value::Varint(code)) => {
                piece.kind = PieceType::from_code(code)
                    .ok_or_else(|| format!("unknown piece type {code}"))?;
            }
            _ => {}
        }
    }
    Ok(piece)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(number << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn reads_pieces_trainer_and_normalizer_fields() {
        let mut piece = Vec::new();
        bytes_field(1, "▁hello".as_bytes(), &mut piece);
        varint(2 << 3 | 5, &mut piece);
        piece.extend_from_slice(&(-3.5f32).to_le_bytes());
        varint(3 << 3, &mut piece);
        varint(4, &mut piece);
        let mut unk = Vec::new();
        bytes_field(1, b"[UNK]", &mut unk);
        varint(3 << 3, &mut unk);
        varint(2, &mut unk);
        let mut trainer = Vec::new();
        varint(40 << 3, &mut trainer);
        varint(1, &mut trainer);
        let mut normalizer = Vec::new();
        bytes_field(1, b"nmt_nfkc", &mut normalizer);
        bytes_field(2, &[9, 8, 7], &mut normalizer);
        let mut model = Vec::new();
        bytes_field(1, &piece, &mut model);
        bytes_field(1, &unk, &mut model);
        bytes_field(2, &trainer, &mut model);
        bytes_field(3, &normalizer, &mut model);

        let parsed = SentencePieceModel::parse(&model).unwrap();
        assert_eq!(parsed.pieces.len(), 2);
        assert_eq!(parsed.pieces[0].piece, "▁hello");
        assert_eq!(parsed.pieces[0].score, -3.5);
        assert_eq!(parsed.pieces[0].kind, PieceType::UserDefined);
        assert_eq!(parsed.pieces[1].kind, PieceType::Unknown);
        assert_eq!(parsed.unk_id, 1);
        assert_eq!(parsed.precompiled_charsmap, vec![9, 8, 7]);
    }

    #[test]
    fn rejects_truncated_input() {
        assert!(SentencePieceModel::parse(&[0x0a, 0x05, b'a']).is_err());
        assert!(SentencePieceModel::parse(b"").is_err());
    }
}
