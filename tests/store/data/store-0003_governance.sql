BEGIN TRANSACTION;
CREATE TABLE ov_agents (
                run_id TEXT NOT NULL REFERENCES ov_runs(id),
                name TEXT NOT NULL,
                runtime TEXT NOT NULL,
                branch TEXT NOT NULL,
                worktree TEXT NOT NULL,
                best_commit TEXT NOT NULL,
                best_metric DOUBLE PRECISION,
                best_trial BIGINT,
                state TEXT NOT NULL DEFAULT 'idle',
                state_since DOUBLE PRECISION, session TEXT,
                PRIMARY KEY (run_id, name)
            );
INSERT INTO "ov_agents" VALUES('20260101-000000','t','optuna','overnight/20260101-000000/t','/tmp/wt','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',NULL,NULL,'idle',1.79531743060016369816e+09,'sess-1');
CREATE TABLE ov_approvals (
                id TEXT PRIMARY KEY,
                lab TEXT NOT NULL,
                run_id TEXT NOT NULL,
                agent TEXT NOT NULL,
                action TEXT NOT NULL,
                reason TEXT NOT NULL,
                risk DOUBLE PRECISION,
                correlation TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL,
                answered_by TEXT,
                note TEXT,
                answered_at DOUBLE PRECISION
            );
INSERT INTO "ov_approvals" VALUES('k7q2mx','toy','20260101-000000','t','{"command":"git push --force","kind":"shell"}','force pushes rewrite shared history',0.9,'20260101-000000:2',1795317431.0,1795321031.0,'pending',NULL,NULL,NULL);
INSERT INTO "ov_approvals" VALUES('p3wz8d','toy','20260101-000000','t','{"kind":"edit","path":"judge.py"}','protected file',0.6,NULL,1795317432.0,1795321032.0,'denied','alice (cli)','never',1795317436.0);
CREATE TABLE ov_attempts (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                lab TEXT NOT NULL,
                run_id TEXT,
                request_id TEXT NOT NULL,
                attempt BIGINT NOT NULL,
                agent TEXT NOT NULL,
                trial TEXT,
                route TEXT NOT NULL,
                upstream TEXT NOT NULL,
                model TEXT NOT NULL,
                credential TEXT NOT NULL,
                client_protocol TEXT NOT NULL,
                upstream_protocol TEXT NOT NULL,
                stream BIGINT NOT NULL,
                outcome TEXT NOT NULL,
                status BIGINT,
                error TEXT,
                started_at DOUBLE PRECISION NOT NULL,
                latency_s DOUBLE PRECISION NOT NULL,
                ttft_s DOUBLE PRECISION,
                input_tokens BIGINT NOT NULL,
                output_tokens BIGINT NOT NULL,
                cache_read_tokens BIGINT NOT NULL,
                cache_write_tokens BIGINT NOT NULL,
                reasoning_tokens BIGINT NOT NULL,
                usage_estimated BIGINT NOT NULL,
                cost_usd DOUBLE PRECISION,
                unpriced BIGINT NOT NULL
            );
INSERT INTO "ov_attempts" VALUES(1,'toy','20260101-000000','req1',1,'t','2','fast','a','m','c','anthropic','anthropic',1,'ok',200,NULL,1.0,0.5,0.1,10,5,0,0,0,0,0.25,0);
CREATE TABLE ov_audit (
                lab TEXT NOT NULL,
                seq BIGINT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                actor TEXT NOT NULL,
                subject TEXT NOT NULL,
                payload TEXT NOT NULL,
                correlation TEXT,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL,
                PRIMARY KEY (lab, seq)
            );
INSERT INTO "ov_audit" VALUES('toy',1,1796557333.18188,'run.created','overnight','run 20260101-000000','{"detail":{"base_commit":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"},"event":1,"event_at":1795317430.5991666,"run":"20260101-000000"}',NULL,'0000000000000000000000000000000000000000000000000000000000000000','ee815a435d23c2deee6403a039a03db56c7866fd8eb7d6374848c7e306a1494e');
INSERT INTO "ov_audit" VALUES('toy',2,1796557333.18188,'trial.proposed','baseline','trial 1','{"detail":{"description":"baseline","requeued_from":null},"event":2,"event_at":1795317430.6003633,"run":"20260101-000000"}','20260101-000000:1','ee815a435d23c2deee6403a039a03db56c7866fd8eb7d6374848c7e306a1494e','861358d85f8277c4f796bee7ec1fda062b08ebb8ce14170acb2f3297a2a8dd8b');
INSERT INTO "ov_audit" VALUES('toy',3,1796557333.18188,'trial.applied','baseline','trial 1','{"detail":{"candidate_commit":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","from":"proposed"},"event":3,"event_at":1795317430.601232,"run":"20260101-000000"}','20260101-000000:1','861358d85f8277c4f796bee7ec1fda062b08ebb8ce14170acb2f3297a2a8dd8b','b71706ad0180d5264653a36839e1f4777746dc7154c08f178120b07625011c25');
INSERT INTO "ov_audit" VALUES('toy',4,1796557333.18188,'trial.checked','baseline','trial 1','{"detail":{"from":"applied"},"event":4,"event_at":1795317430.6020231,"run":"20260101-000000"}','20260101-000000:1','b71706ad0180d5264653a36839e1f4777746dc7154c08f178120b07625011c25','73c669f5a351b668be233909faccd557c16e110c998811a00fde2fcc57f8ce8e');
INSERT INTO "ov_audit" VALUES('toy',5,1796557333.18188,'trial.running','baseline','trial 1','{"detail":{"from":"checked"},"event":5,"event_at":1795317430.6026495,"run":"20260101-000000"}','20260101-000000:1','73c669f5a351b668be233909faccd557c16e110c998811a00fde2fcc57f8ce8e','c88e5c306024cf5870343876f85c67a4868bc3092255457b6627f4313259229d');
INSERT INTO "ov_audit" VALUES('toy',6,1796557333.18188,'trial.measured','baseline','trial 1','{"detail":{"from":"running","metric":2.5},"event":6,"event_at":1795317430.6033611,"run":"20260101-000000"}','20260101-000000:1','c88e5c306024cf5870343876f85c67a4868bc3092255457b6627f4313259229d','5c973868e3cf00eba492ad748ccfacbef4ade21cb1136a7040925fd9c60b9e2f');
INSERT INTO "ov_audit" VALUES('toy',7,1796557333.18188,'trial.kept','baseline','trial 1','{"detail":{"from":"measured"},"event":7,"event_at":1795317430.6040921,"run":"20260101-000000"}','20260101-000000:1','5c973868e3cf00eba492ad748ccfacbef4ade21cb1136a7040925fd9c60b9e2f','75c432cd1c9a77250f97ce648120ed7e644ed1078da2fd6aa08d21b890b0024f');
INSERT INTO "ov_audit" VALUES('toy',8,1796557333.18188,'trial.proposed','t','trial 2','{"detail":{"description":"X 1 -> 2","requeued_from":null},"event":8,"event_at":1795317430.604779,"run":"20260101-000000"}','20260101-000000:2','75c432cd1c9a77250f97ce648120ed7e644ed1078da2fd6aa08d21b890b0024f','ed648dd0f48a545631427ee4c8dda721afefd4060cdee45f61abec381ae936a9');
INSERT INTO "ov_audit" VALUES('toy',9,1796557333.18188,'trial.crashed','t','trial 2','{"detail":{"from":"proposed","reason":"bad"},"event":9,"event_at":1795317430.605288,"run":"20260101-000000"}','20260101-000000:2','ed648dd0f48a545631427ee4c8dda721afefd4060cdee45f61abec381ae936a9','c1e6c9ee214fecb9a7d27484a7ec8e68b603eae1d5c1ab9087c357be09cae58a');
INSERT INTO "ov_audit" VALUES('toy',10,1796557333.18188,'approval.requested','t','approval k7q2mx','{"detail":{"action":{"command":"git push --force","kind":"shell"},"correlation":"20260101-000000:2","expires_at":1795321031.0,"id":"k7q2mx","reason":"force pushes rewrite shared history","risk":0.9},"event":10,"event_at":1795317431.0,"run":"20260101-000000"}','20260101-000000:2','c1e6c9ee214fecb9a7d27484a7ec8e68b603eae1d5c1ab9087c357be09cae58a','385eeaef6bebde4e157af0b3901624b8a4cf380f54c2bf80ec101fda031bd814');
INSERT INTO "ov_audit" VALUES('toy',11,1796557333.18188,'approval.requested','t','approval p3wz8d','{"detail":{"action":{"kind":"edit","path":"judge.py"},"correlation":null,"expires_at":1795321032.0,"id":"p3wz8d","reason":"protected file","risk":0.6},"event":11,"event_at":1795317432.0,"run":"20260101-000000"}',NULL,'385eeaef6bebde4e157af0b3901624b8a4cf380f54c2bf80ec101fda031bd814','7af7ce049eb3930bc5b9f84277403ef0e4adda07be5f795fe18568c8d824c40a');
INSERT INTO "ov_audit" VALUES('toy',12,1796557333.18188,'approval.denied','alice (cli)','approval p3wz8d','{"detail":{"by":"alice (cli)","correlation":null,"id":"p3wz8d","note":"never"},"event":12,"event_at":1795317436.0,"run":"20260101-000000"}',NULL,'7af7ce049eb3930bc5b9f84277403ef0e4adda07be5f795fe18568c8d824c40a','a5f6b62102fcfc7dc7bfcb380ba8a06f2339bf5587acd62b6e7a54eed8fb531d');
INSERT INTO "ov_audit" VALUES('toy',13,1796557333.18188,'gateway.attempt','t','model fast','{"attempt":1,"attempt_id":1,"cache_read_tokens":0,"cache_write_tokens":0,"cost_usd":0.25,"credential":"c","error":null,"input_tokens":10,"latency_s":0.5,"model":"m","outcome":"ok","output_tokens":5,"request_id":"req1","route":"fast","run":"20260101-000000","started_at":1.0,"status":200,"trial":"2","unpriced":false,"upstream":"a"}','20260101-000000:2','a5f6b62102fcfc7dc7bfcb380ba8a06f2339bf5587acd62b6e7a54eed8fb531d','32f4304121ca9bf0876b14c5b5eb640fe7ab34d3753ca9c9e49f780f3c5c147b');
CREATE TABLE ov_audit_checkpoints (
                lab TEXT NOT NULL,
                seq BIGINT NOT NULL,
                hash TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                key_id TEXT NOT NULL,
                mac TEXT NOT NULL,
                PRIMARY KEY (lab, seq)
            );
CREATE TABLE ov_audit_cursors (
                lab TEXT NOT NULL,
                source TEXT NOT NULL,
                position BIGINT NOT NULL,
                PRIMARY KEY (lab, source)
            );
INSERT INTO "ov_audit_cursors" VALUES('toy','events',12);
INSERT INTO "ov_audit_cursors" VALUES('toy','attempts',1);
CREATE TABLE ov_events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run_id TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                agent TEXT,
                trial BIGINT,
                payload TEXT NOT NULL
            );
INSERT INTO "ov_events" VALUES(1,'20260101-000000',1.79531743059916663171e+09,'run.created',NULL,NULL,'{"base_commit":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}');
INSERT INTO "ov_events" VALUES(2,'20260101-000000',1.79531743060036325454e+09,'trial.proposed','baseline',1,'{"description":"baseline","requeued_from":null}');
INSERT INTO "ov_events" VALUES(3,'20260101-000000',1.79531743060123205189e+09,'trial.applied','baseline',1,'{"candidate_commit":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","from":"proposed"}');
INSERT INTO "ov_events" VALUES(4,'20260101-000000',1.7953174306020231247e+09,'trial.checked','baseline',1,'{"from":"applied"}');
INSERT INTO "ov_events" VALUES(5,'20260101-000000',1.79531743060264945034e+09,'trial.running','baseline',1,'{"from":"checked"}');
INSERT INTO "ov_events" VALUES(6,'20260101-000000',1.79531743060336112976e+09,'trial.measured','baseline',1,'{"from":"running","metric":2.5}');
INSERT INTO "ov_events" VALUES(7,'20260101-000000',1.79531743060409212115e+09,'trial.kept','baseline',1,'{"from":"measured"}');
INSERT INTO "ov_events" VALUES(8,'20260101-000000',1.79531743060477900512e+09,'trial.proposed','t',2,'{"description":"X 1 -> 2","requeued_from":null}');
INSERT INTO "ov_events" VALUES(9,'20260101-000000',1.79531743060528802867e+09,'trial.crashed','t',2,'{"from":"proposed","reason":"bad"}');
INSERT INTO "ov_events" VALUES(10,'20260101-000000',1795317431.0,'approval.requested','t',NULL,'{"action":{"command":"git push --force","kind":"shell"},"correlation":"20260101-000000:2","expires_at":1795321031.0,"id":"k7q2mx","reason":"force pushes rewrite shared history","risk":0.9}');
INSERT INTO "ov_events" VALUES(11,'20260101-000000',1795317432.0,'approval.requested','t',NULL,'{"action":{"kind":"edit","path":"judge.py"},"correlation":null,"expires_at":1795321032.0,"id":"p3wz8d","reason":"protected file","risk":0.6}');
INSERT INTO "ov_events" VALUES(12,'20260101-000000',1795317436.0,'approval.denied','t',NULL,'{"by":"alice (cli)","correlation":null,"id":"p3wz8d","note":"never"}');
CREATE TABLE ov_gateway_keys (
                key_hash TEXT PRIMARY KEY,
                lab TEXT NOT NULL,
                agent TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            );
INSERT INTO "ov_gateway_keys" VALUES('dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd','toy','t',1.79531743060591220855e+09);
CREATE TABLE ov_migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL);
INSERT INTO "ov_migrations" VALUES('0001_initial',1.79531743059824347493e+09);
INSERT INTO "ov_migrations" VALUES('0002_agent_session',1.79532602906768202783e+09);
INSERT INTO "ov_migrations" VALUES('0003_governance',1.79655733317304873463e+09);
CREATE TABLE ov_runs (
                id TEXT PRIMARY KEY,
                lab TEXT NOT NULL,
                base_commit TEXT NOT NULL,
                protected TEXT NOT NULL,
                config TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                trial_seq BIGINT NOT NULL DEFAULT 0
            );
INSERT INTO "ov_runs" VALUES('20260101-000000','toy','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','{"judge.py":"cccccccccccccccccccccccccccccccccccccccc"}','{"lab":{"metric":"score","name":"toy"}}',1.79531743059916663171e+09,2);
CREATE TABLE ov_trials (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run_id TEXT NOT NULL REFERENCES ov_runs(id),
                number BIGINT NOT NULL,
                agent TEXT NOT NULL,
                status TEXT NOT NULL,
                parent_commit TEXT NOT NULL,
                candidate_commit TEXT,
                description TEXT NOT NULL,
                proposal TEXT NOT NULL,
                metric DOUBLE PRECISION,
                metrics TEXT NOT NULL DEFAULT '[]',
                diff TEXT,
                reason TEXT,
                log_path TEXT,
                log_tail TEXT,
                pid BIGINT,
                requeued_from BIGINT,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                duration_s DOUBLE PRECISION,
                tokens BIGINT NOT NULL DEFAULT 0,
                cost_usd DOUBLE PRECISION,
                UNIQUE (run_id, number)
            );
INSERT INTO "ov_trials" VALUES(1,'20260101-000000',1,'baseline','kept','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','baseline','{"baseline":true}',2.5,'[2.5]','',NULL,'/tmp/l',NULL,NULL,NULL,1.79531743060036325454e+09,1.79531743060409212115e+09,NULL,1.0,NULL,0,NULL);
INSERT INTO "ov_trials" VALUES(2,'20260101-000000',2,'t','crashed','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',NULL,'X 1 -> 2','{"optuna_trial":0,"params":{"X":2}}',NULL,'[]',NULL,'bad',NULL,NULL,NULL,NULL,1.79531743060477900512e+09,1.79531743060528802867e+09,NULL,NULL,NULL,0,NULL);
CREATE INDEX ov_runs_lab ON ov_runs (lab, created_at);
CREATE INDEX ov_trials_agent ON ov_trials (run_id, agent, number);
CREATE INDEX ov_trials_status ON ov_trials (run_id, status);
CREATE INDEX ov_events_run ON ov_events (run_id, id);
CREATE INDEX ov_attempts_agent ON ov_attempts (lab, agent, started_at);
CREATE INDEX ov_attempts_trial ON ov_attempts (lab, trial);
CREATE INDEX ov_approvals_lab ON ov_approvals (lab, status, created_at);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('ov_trials',2);
INSERT INTO "sqlite_sequence" VALUES('ov_events',12);
INSERT INTO "sqlite_sequence" VALUES('ov_attempts',1);
COMMIT;
