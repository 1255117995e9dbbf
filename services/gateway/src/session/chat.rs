//! Chats: one-to-one (msgid 5) and group (msgid 9). The chat is checked
//! (the receiver exists; the sender is a member), paced by its fan-out, and
//! handed to `delivery::send`; the reply says what was accepted.

use serde_json::{Map, Value};

use super::Session;
use crate::{
    delivery::send::{self, Outgoing, new_message_id},
    metrics::metrics,
    protocol::{
        classic::{self, Failure, errno},
        conversation::{self, Conversation},
    },
};

impl Session {
    pub(super) async fn one_chat(
        &self,
        sender: (i64, &str),
        to: i64,
        body: Map<String, Value>,
        cmid: Option<String>,
    ) -> Result<Map<String, Value>, Failure> {
        if !(self.node.registry.contains(to) || self.node.directory.user_exists(to).await?) {
            return Err(Failure::new(
                errno::NOT_FOUND,
                format!("user {to} does not exist"),
            ));
        }
        self.not_blocked(sender.0, to).await?;
        self.chat(
            sender,
            &[to],
            body,
            cmid,
            Conversation::direct(sender.0, to),
        )
        .await
    }

    /// A one-to-one chat's receiver has not blocked its sender.
    async fn not_blocked(&self, sender: i64, to: i64) -> Result<(), Failure> {
        if self.node.directory.blocks(to, sender).await {
            return Err(Failure::new(
                errno::FORBIDDEN,
                format!("user {to} does not accept your messages"),
            ));
        }
        Ok(())
    }

    pub(super) async fn group_chat(
        &mut self,
        sender: (i64, &str),
        group: i64,
        body: Map<String, Value>,
        cmid: Option<String>,
    ) -> Result<Map<String, Value>, Failure> {
        let user = sender.0;
        let members = self.node.directory.group_members(group).await?;
        if !members.contains(&user) {
            return Err(Failure::new(
                errno::FORBIDDEN,
                format!("you are not a member of group {group}"),
            ));
        }
        let receivers: Vec<i64> = members.iter().copied().filter(|m| *m != user).collect();
        if receivers.is_empty() {
            return Ok(Map::new());
        }
        // Fan-out is charged to the sender: one request's token was
        // taken when it arrived, the rest per receivers here.
        let per_token = self.node.config.limits.fanout_per_token;
        let extra = u32::try_from(receivers.len()).unwrap_or(u32::MAX) / per_token;
        let wait = self.limiter.take(extra);
        if !wait.is_zero() {
            metrics().paced.inc();
            tokio::time::sleep(wait).await;
        }
        self.chat(sender, &receivers, body, cmid, Conversation::Group(group))
            .await
    }

    /// Records a chat for its receivers. Fails when nobody got it; when only
    /// some did, the reply says who did not and why. A device session's
    /// other devices see it too (a live event, not an inbox entry: it is in
    /// history for a device that misses it).
    async fn chat(
        &self,
        sender: (i64, &str),
        receivers: &[i64],
        body: Map<String, Value>,
        cmid: Option<String>,
        conversation: Conversation,
    ) -> Result<Map<String, Value>, Failure> {
        let frame = classic::forward_chat(body, sender.0, sender.1, classic_now);
        let message = Outgoing {
            sender_id: sender.0,
            frame: &frame,
            dedup: cmid.is_some(),
            mid: match cmid {
                Some(cmid) => format!("{}-{cmid}", sender.0),
                None => new_message_id(),
            },
            conversation,
        };
        let delivered = match conversation {
            Conversation::Group(group) => {
                send::to_group(&self.node, group, receivers, &message).await
            }
            Conversation::Direct(..) => send::deliver(&self.node, receivers, &message).await,
        };
        self.chat_reply(sender.0, receivers, &frame, &message, delivered)
    }

    /// A burst of one-to-one chats to one receiver, already read (see
    /// `send::deliver_unit`): one result per chat, in order, each as
    /// [`Self::one_chat`]'s. `spans`: each chat's request span.
    pub(super) async fn one_chats(
        &self,
        sender: (i64, &str),
        to: i64,
        chats: Vec<(Map<String, Value>, Option<String>)>,
        spans: &[tracing::Span],
    ) -> Vec<Result<Map<String, Value>, Failure>> {
        if !self.node.registry.contains(to) {
            match self.node.directory.user_exists(to).await {
                Ok(true) => {}
                Ok(false) => {
                    let missing =
                        Failure::new(errno::NOT_FOUND, format!("user {to} does not exist"));
                    return chats.iter().map(|_| Err(missing.clone())).collect();
                }
                Err(failure) => return chats.iter().map(|_| Err(failure.clone())).collect(),
            }
        }
        if let Err(refused) = self.not_blocked(sender.0, to).await {
            return chats.iter().map(|_| Err(refused.clone())).collect();
        }
        let conversation = Conversation::direct(sender.0, to);
        let (bodies, cmids): (Vec<_>, Vec<_>) = chats.into_iter().unzip();
        let frames: Vec<Vec<u8>> = bodies
            .into_iter()
            .map(|body| classic::forward_chat(body, sender.0, sender.1, classic_now))
            .collect();
        let messages: Vec<Outgoing<'_>> = cmids
            .into_iter()
            .zip(&frames)
            .map(|(cmid, frame)| Outgoing {
                sender_id: sender.0,
                frame,
                dedup: cmid.is_some(),
                mid: match cmid {
                    Some(cmid) => format!("{}-{cmid}", sender.0),
                    None => new_message_id(),
                },
                conversation,
            })
            .collect();
        let delivered = send::deliver_unit(&self.node, to, &messages, spans).await;
        messages
            .iter()
            .zip(&frames)
            .zip(delivered)
            .map(|((message, frame), delivered)| {
                self.chat_reply(sender.0, &[to], frame, message, delivered)
            })
            .collect()
    }

    /// The reply to a chat `delivered` says was recorded (or not), and the
    /// sender's other devices' copy.
    fn chat_reply(
        &self,
        sender: i64,
        receivers: &[i64],
        frame: &[u8],
        message: &Outgoing<'_>,
        delivered: send::Delivered,
    ) -> Result<Map<String, Value>, Failure> {
        let conversation = message.conversation;
        let accepted = delivered.results.iter().any(Result::is_ok);
        if let Some(cseq) = delivered.cseq
            && accepted
            && self.active.as_ref().is_some_and(|a| {
                a.kind.acknowledges() && a.peers.load(std::sync::atomic::Ordering::Relaxed)
            })
        {
            let head = conversation::numbered_head(frame, &conversation).unwrap_or_default();
            let numbered = conversation::complete(&head, cseq);
            let carbon = classic::with_delivery_fields(&numbered, &message.mid, 0);
            let node = self.node.clone();
            let me = node.session_address(self.connection);
            let sender_id = sender;
            tokio::spawn(async move {
                node.redis.publish_live(&[sender_id], &me, &carbon).await;
            });
        }
        let failed: Vec<(i64, Failure)> = receivers
            .iter()
            .zip(delivered.results)
            .filter_map(|(&to, r)| r.err().map(|f| (to, f)))
            .collect();
        let mut reply = Map::new();
        reply.insert("mid".into(), message.mid.clone().into());
        if let Some(cseq) = delivered.cseq {
            reply.insert("conv".into(), conversation.to_string().into());
            reply.insert("cseq".into(), cseq.into());
        }
        match failed.first() {
            None => Ok(reply),
            Some((_, first)) if failed.len() == receivers.len() => Err(first.clone()),
            Some(_) => {
                let list: Vec<Value> = failed
                    .iter()
                    .map(|(id, f)| serde_json::json!({"id": id, "errno": f.errno, "errmsg": f.errmsg}))
                    .collect();
                reply.insert("failed".into(), list.into());
                Ok(reply)
            }
        }
    }
}

/// `failed` of a group chat's results, as one failure naming the members.
pub(super) fn partial_failure(results: &Map<String, Value>) -> Option<Failure> {
    let failed = results.get("failed")?.as_array()?;
    let first = failed.first()?;
    let ids: Vec<String> = failed.iter().map(|f| f["id"].to_string()).collect();
    Some(Failure::new(
        first["errno"].as_i64().unwrap_or(errno::INTERNAL),
        format!(
            "delivered to the group except members {}: {}",
            ids.join(", "),
            first["errmsg"].as_str().unwrap_or("not accepted")
        ),
    ))
}

/// The classic `time` format, "YYYY-MM-DD HH:MM:SS", in UTC.
pub fn classic_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_time_format() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_609_815), "2026-11-25 12:30:15");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00");
    }
}
