//! Reading the message envelope off `connector.<channel>`: JSON (what the pipeline writes), or the
//! same record as Confluent-framed Avro (`schemas/avro/channel_message.avsc`, `data` as JSON text).

use std::sync::OnceLock;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use touchpoint_schemas::ChannelMessage;
use touchpoint_schemas::JourneyStep;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The schema is ours and tested to parse (touchpoint_schemas::avro tests).
        Schema::parse_str(touchpoint_schemas::avro::CHANNEL_MESSAGE).unwrap_or(Schema::Null)
    })
}

/// Why a record is no channel message (it goes to the dead-letter topic), or a message cannot be
/// written as Avro.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("empty record (no value)")]
    Empty,
    #[error("not a channel message: {0}")]
    NotAMessage(String),
    #[error("Avro: {0}")]
    Avro(String),
    #[error("Avro: not a record")]
    NotARecord,
    #[error("Avro: field {0} missing")]
    MissingField(String),
    #[error("Avro: data is not JSON: {0}")]
    DataNotJson(String),
    #[error("idempotency_key is empty")]
    NoIdempotencyKey,
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    #[error("unknown purpose {0:?}")]
    UnknownPurpose(String),
}

/// Decodes a record value.
pub fn decode(payload: Option<&[u8]>) -> Result<ChannelMessage, EnvelopeError> {
    let bytes = payload.ok_or(EnvelopeError::Empty)?;
    let message = match bytes.first() {
        Some(0) if bytes.len() > 5 => from_avro(&bytes[5..])?,
        _ => serde_json::from_slice::<ChannelMessage>(bytes).map_err(|e| EnvelopeError::NotAMessage(e.to_string()))?,
    };
    if message.idempotency_key.trim().is_empty() {
        return Err(EnvelopeError::NoIdempotencyKey);
    }
    Ok(message)
}

fn from_avro(mut datum: &[u8]) -> Result<ChannelMessage, EnvelopeError> {
    let value = apache_avro::reader::datum::GenericDatumReader::builder(schema())
        .build()
        .and_then(|reader| reader.read_value(&mut datum))
        .map_err(|e| EnvelopeError::Avro(e.to_string()))?;
    let Avro::Record(fields) = value else { return Err(EnvelopeError::NotARecord) };
    let get = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let text = |name: &str| -> Result<String, EnvelopeError> {
        match get(name) {
            Some(Avro::String(s)) | Some(Avro::Enum(_, s)) => Ok(s.clone()),
            _ => Err(EnvelopeError::MissingField(name.to_string())),
        }
    };
    let optional = |name: &str| match get(name) {
        Some(Avro::Union(_, v)) => match v.as_ref() {
            Avro::String(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let int = |name: &str| match get(name) {
        Some(Avro::Int(i)) => i64::from(*i),
        Some(Avro::Long(l)) => *l,
        _ => 0,
    };
    let metadata = match get("metadata") {
        Some(Avro::Map(m)) => m
            .iter()
            .filter_map(|(k, v)| match v {
                Avro::String(s) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect(),
        _ => Default::default(),
    };
    let journey = match get("journey") {
        Some(Avro::Union(_, v)) => match v.as_ref() {
            Avro::Record(j) => {
                let f = |n: &str| {
                    j.iter()
                        .find(|(k, _)| k == n)
                        .and_then(|(_, v)| if let Avro::String(s) = v { Some(s.clone()) } else { None })
                        .unwrap_or_default()
                };
                Some(JourneyStep { journey: f("journey"), version: f("version"), step: f("step") })
            }
            _ => None,
        },
        _ => None,
    };
    let data = match optional("data") {
        Some(text) => serde_json::from_str(&text).map_err(|e| EnvelopeError::DataNotJson(e.to_string()))?,
        None => serde_json::Value::Null,
    };
    Ok(ChannelMessage {
        idempotency_key: text("idempotency_key")?,
        channel: text("channel")
            .and_then(|c| touchpoint_schemas::Channel::parse(&c).ok_or(EnvelopeError::UnknownChannel(c)))?,
        tenant_id: text("tenant_id")?,
        subject_id: text("subject_id")?,
        recipient: optional("recipient"),
        template: optional("template"),
        data,
        metadata,
        category: text("category")?,
        purpose: text("purpose")
            .and_then(|p| touchpoint_schemas::Purpose::parse(&p).ok_or(EnvelopeError::UnknownPurpose(p)))?,
        priority: i32::try_from(int("priority")).unwrap_or_default(),
        event_id: text("event_id")?,
        event_type: text("event_type")?,
        occurred_at: int("occurred_at"),
        rule_id: text("rule_id")?,
        intents_version: text("intents_version")?,
        caps_version: text("caps_version")?,
        journey,
    })
}

/// Confluent framing (magic 0, 4-byte schema id) of a message in the Avro schema; for producers that
/// prefer Avro, and for tests.
pub fn to_avro(m: &ChannelMessage, schema_id: u32) -> Result<Vec<u8>, EnvelopeError> {
    let opt = |v: &Option<String>| match v {
        Some(s) => Avro::Union(1, Box::new(Avro::String(s.clone()))),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    // The symbols' order in `channel_message.avsc`.
    let channel_index = match m.channel {
        touchpoint_schemas::Channel::Email => 0,
        touchpoint_schemas::Channel::Webhook => 1,
        touchpoint_schemas::Channel::Push => 2,
        touchpoint_schemas::Channel::Sms => 3,
    };
    let purpose_index = match m.purpose {
        touchpoint_schemas::Purpose::Marketing => 0,
        touchpoint_schemas::Purpose::Transactional => 1,
    };
    let journey = match &m.journey {
        Some(j) => Avro::Union(
            1,
            Box::new(Avro::Record(vec![
                ("journey".into(), Avro::String(j.journey.clone())),
                ("version".into(), Avro::String(j.version.clone())),
                ("step".into(), Avro::String(j.step.clone())),
            ])),
        ),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    let data = if m.data.is_null() { None } else { Some(m.data.to_string()) };
    let value = Avro::Record(vec![
        ("idempotency_key".into(), Avro::String(m.idempotency_key.clone())),
        ("channel".into(), Avro::Enum(channel_index, m.channel.as_str().to_string())),
        ("tenant_id".into(), Avro::String(m.tenant_id.clone())),
        ("subject_id".into(), Avro::String(m.subject_id.clone())),
        ("recipient".into(), opt(&m.recipient)),
        ("template".into(), opt(&m.template)),
        ("data".into(), opt(&data)),
        ("metadata".into(), Avro::Map(m.metadata.iter().map(|(k, v)| (k.clone(), Avro::String(v.clone()))).collect())),
        ("category".into(), Avro::String(m.category.clone())),
        ("purpose".into(), Avro::Enum(purpose_index, m.purpose.as_str().to_string())),
        ("priority".into(), Avro::Int(m.priority)),
        ("event_id".into(), Avro::String(m.event_id.clone())),
        ("event_type".into(), Avro::String(m.event_type.clone())),
        ("occurred_at".into(), Avro::Long(m.occurred_at)),
        ("rule_id".into(), Avro::String(m.rule_id.clone())),
        ("intents_version".into(), Avro::String(m.intents_version.clone())),
        ("caps_version".into(), Avro::String(m.caps_version.clone())),
        ("journey".into(), journey),
    ]);
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(schema())
        .build()
        .and_then(|w| w.write_value_to_vec(value))
        .map_err(|e| EnvelopeError::Avro(e.to_string()))?;
    let mut out = vec![0u8];
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::templates::tests::message;

    #[test]
    fn json_and_avro_carry_the_same_message() {
        let mut m = message(Some("welcome"), serde_json::json!({"first_name": "Ada", "n": [1, 2]}));
        m.journey = Some(JourneyStep { journey: "welcome".into(), version: "v-1".into(), step: "hello".into() });
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(decode(Some(&json)).unwrap(), m);
        let avro = to_avro(&m, 7).unwrap();
        assert_eq!(decode(Some(&avro)).unwrap(), m);
    }

    #[test]
    fn what_is_no_message_says_why() {
        assert_eq!(decode(None).unwrap_err().to_string(), "empty record (no value)");
        assert!(decode(Some(b"{\"a\":1}")).unwrap_err().to_string().starts_with("not a channel message"));
        let mut m = message(None, serde_json::json!({}));
        m.idempotency_key = " ".into();
        assert_eq!(decode(Some(&serde_json::to_vec(&m).unwrap())).unwrap_err().to_string(), "idempotency_key is empty");
        assert!(decode(Some(&[0, 0, 0, 0, 1, 200])).unwrap_err().to_string().starts_with("Avro"));
    }
}
