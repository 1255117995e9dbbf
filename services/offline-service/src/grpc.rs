//! gRPC handlers: protobuf in, store call, protobuf out. No decisions here.

use clusterchat_proto::offline::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{
    domain::{NewMessage, ReceiverId, page_size},
    store::OfflineStore,
};

pub struct OfflineGrpc {
    store: OfflineStore,
}

impl OfflineGrpc {
    pub fn new(store: OfflineStore) -> pb::offline_service_server::OfflineServiceServer<Self> {
        pb::offline_service_server::OfflineServiceServer::new(Self { store })
            .max_decoding_message_size(grpc_server::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc_server::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl pb::offline_service_server::OfflineService for OfflineGrpc {
    #[tracing::instrument(skip_all, fields(receiver_id = request.get_ref().receiver_id, bytes = request.get_ref().payload.len()))]
    async fn store(
        &self,
        request: Request<pb::StoreRequest>,
    ) -> Result<Response<pb::StoreResponse>, Status> {
        let req = request.into_inner();
        let message = NewMessage::parse(
            req.receiver_id,
            req.sender_id,
            req.client_msg_id,
            req.payload,
            self.store.limits(),
        )?
        .with_inbox_seq(req.inbox_seq);
        let stored = self.store.store(&message).await?;
        Ok(Response::new(pb::StoreResponse {
            position: stored.position,
            duplicate: stored.duplicate,
        }))
    }

    #[tracing::instrument(skip_all, fields(receiver_id = request.get_ref().receiver_id, after = request.get_ref().after))]
    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let req = request.into_inner();
        let receiver = ReceiverId::parse(req.receiver_id)?;
        let limit = page_size(req.limit)?;
        let (messages, more) = self.store.fetch(receiver, req.after, limit).await?;
        Ok(Response::new(pb::FetchResponse {
            messages: messages
                .into_iter()
                .map(|m| pb::OfflineMessage {
                    position: m.position,
                    sender_id: m.sender_id,
                    payload: m.payload,
                    stored_at_unix_ms: m.stored_at_unix_ms,
                    client_msg_id: m.client_msg_id.unwrap_or_default(),
                    inbox_seq: m.inbox_seq,
                })
                .collect(),
            more,
        }))
    }

    #[tracing::instrument(skip_all, fields(receiver_id = request.get_ref().receiver_id, up_to = request.get_ref().up_to))]
    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let req = request.into_inner();
        let receiver = ReceiverId::parse(req.receiver_id)?;
        let removed = self.store.ack(receiver, req.up_to).await?;
        Ok(Response::new(pb::AckResponse { removed }))
    }

    #[tracing::instrument(skip_all)]
    async fn unsequenced(
        &self,
        request: Request<pb::UnsequencedRequest>,
    ) -> Result<Response<pb::UnsequencedResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 100_000,
            n => n.min(100_000),
        };
        let sender = (request.sender_id != 0).then_some(request.sender_id);
        let (receiver_ids, more) = self.store.unsequenced(limit, sender).await?;
        Ok(Response::new(pb::UnsequencedResponse {
            receiver_ids,
            more,
        }))
    }
}
