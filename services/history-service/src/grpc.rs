//! gRPC handlers: protobuf in, use case, protobuf out. No decisions here.

use clusterchat_proto::history::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{
    domain::{Conversation, Page, StoredMessage, UserId, list_size},
    search::{SearchQuery, page_bounds},
    service::History,
};

pub struct HistoryGrpc {
    history: History,
}

impl HistoryGrpc {
    pub fn new(history: History) -> pb::history_service_server::HistoryServiceServer<Self> {
        pb::history_service_server::HistoryServiceServer::new(Self { history })
            .max_decoding_message_size(grpc_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc_server::MAX_MESSAGE_BYTES)
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn message_to_pb(message: StoredMessage) -> pb::HistoryMessage {
    pb::HistoryMessage {
        text: message.text(),
        conversation: message.conversation.to_string(),
        seq: message.seq,
        mid: message.mid,
        sender_id: message.sender_id,
        sent_at_micros: message.sent_at_us,
        frame: message.frame,
    }
}

#[tonic::async_trait]
impl pb::history_service_server::HistoryService for HistoryGrpc {
    #[tracing::instrument(skip_all, fields(user_id = request.get_ref().user_id, conversation = %request.get_ref().conversation))]
    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Reply<pb::GetHistoryResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let conversation = Conversation::parse(&req.conversation)?;
        let page = Page::parse(req.before_seq, req.after_seq, req.limit)?;
        let page = self.history.history(user, conversation, page).await?;
        Ok(Response::new(pb::GetHistoryResponse {
            messages: page.messages.into_iter().map(message_to_pb).collect(),
            more: page.more,
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = request.get_ref().user_id))]
    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Reply<pb::ListConversationsResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let list = self
            .history
            .conversations(user, list_size(req.limit))
            .await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: list
                .into_iter()
                .map(|c| pb::Conversation {
                    conversation: c.conversation.to_string(),
                    peer_id: c.conversation.peer_of(user).map_or(0, UserId::get),
                    group_id: c.conversation.group().unwrap_or(0),
                    last: Some(message_to_pb(c.last)),
                    read_seq: c.read_seq,
                    unread: c.unread,
                    peer_read_seq: c.peer_read_seq,
                })
                .collect(),
        }))
    }

    // Never the query text in a span: it is what people wrote.
    #[tracing::instrument(skip_all, fields(user_id = request.get_ref().user_id, conversation = %request.get_ref().conversation))]
    async fn search_messages(
        &self,
        request: Request<pb::SearchMessagesRequest>,
    ) -> Reply<pb::SearchMessagesResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let query = SearchQuery::parse(&req.query)?;
        let conversation = match req.conversation.as_str() {
            "" => None,
            raw => Some(Conversation::parse(raw)?),
        };
        let (limit, offset) = page_bounds(req.limit, req.offset)?;
        let page = self
            .history
            .search(user, &query, conversation, limit, offset)
            .await?;
        Ok(Response::new(pb::SearchMessagesResponse {
            hits: page
                .hits
                .into_iter()
                .map(|hit| {
                    let message = message_to_pb(hit.message);
                    pb::SearchHit {
                        highlights: query
                            .highlights(&message.text)
                            .into_iter()
                            .map(|(start, end)| pb::Highlight { start, end })
                            .collect(),
                        message: Some(message),
                        score: hit.score,
                    }
                })
                .collect(),
            more: page.more,
        }))
    }

    #[tracing::instrument(skip_all, fields(user_id = request.get_ref().user_id, conversation = %request.get_ref().conversation, up_to = request.get_ref().up_to_seq))]
    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Reply<pb::MarkReadResponse> {
        let req = request.into_inner();
        let user = UserId::parse(req.user_id, "user_id")?;
        let conversation = Conversation::parse(&req.conversation)?;
        let state = self
            .history
            .mark_read(user, conversation, req.up_to_seq)
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            read_seq: state.read_seq,
            unread: state.unread,
        }))
    }
}
