PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE ov_migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL);
INSERT INTO ov_migrations VALUES('0001_initial',1795317430.5982434749);
CREATE TABLE ov_runs (
                id TEXT PRIMARY KEY,
                lab TEXT NOT NULL,
                base_commit TEXT NOT NULL,
                protected TEXT NOT NULL,
                config TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                trial_seq BIGINT NOT NULL DEFAULT 0
            );
INSERT INTO ov_runs VALUES('20260101-000000','toy','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','{"judge.py":"cccccccccccccccccccccccccccccccccccccccc"}','{"lab":{"metric":"score","name":"toy"}}',1795317430.5991666317,2);
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
                state_since DOUBLE PRECISION,
                PRIMARY KEY (run_id, name)
            );
INSERT INTO ov_agents VALUES('20260101-000000','t','optuna','overnight/20260101-000000/t','/tmp/wt','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',NULL,NULL,'idle',1795317430.6001636981);
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
INSERT INTO ov_trials VALUES(1,'20260101-000000',1,'baseline','kept','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','baseline','{"baseline":true}',2.5,'[2.5]','',NULL,'/tmp/l',NULL,NULL,NULL,1795317430.6003632545,1795317430.6040921211,NULL,1.0,NULL,0,NULL);
INSERT INTO ov_trials VALUES(2,'20260101-000000',2,'t','crashed','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',NULL,'X 1 -> 2','{"optuna_trial":0,"params":{"X":2}}',NULL,'[]',NULL,'bad',NULL,NULL,NULL,NULL,1795317430.6047790051,1795317430.6052880286,NULL,NULL,NULL,0,NULL);
CREATE TABLE ov_events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run_id TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                kind TEXT NOT NULL,
                agent TEXT,
                trial BIGINT,
                payload TEXT NOT NULL
            );
INSERT INTO ov_events VALUES(1,'20260101-000000',1795317430.5991666317,'run.created',NULL,NULL,'{"base_commit":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"}');
INSERT INTO ov_events VALUES(2,'20260101-000000',1795317430.6003632545,'trial.proposed','baseline',1,'{"description":"baseline","requeued_from":null}');
INSERT INTO ov_events VALUES(3,'20260101-000000',1795317430.6012320518,'trial.applied','baseline',1,'{"candidate_commit":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","from":"proposed"}');
INSERT INTO ov_events VALUES(4,'20260101-000000',1795317430.6020231247,'trial.checked','baseline',1,'{"from":"applied"}');
INSERT INTO ov_events VALUES(5,'20260101-000000',1795317430.6026494503,'trial.running','baseline',1,'{"from":"checked"}');
INSERT INTO ov_events VALUES(6,'20260101-000000',1795317430.6033611297,'trial.measured','baseline',1,'{"from":"running","metric":2.5}');
INSERT INTO ov_events VALUES(7,'20260101-000000',1795317430.6040921211,'trial.kept','baseline',1,'{"from":"measured"}');
INSERT INTO ov_events VALUES(8,'20260101-000000',1795317430.6047790051,'trial.proposed','t',2,'{"description":"X 1 -> 2","requeued_from":null}');
INSERT INTO ov_events VALUES(9,'20260101-000000',1795317430.6052880286,'trial.crashed','t',2,'{"from":"proposed","reason":"bad"}');
CREATE TABLE ov_gateway_keys (
                key_hash TEXT PRIMARY KEY,
                lab TEXT NOT NULL,
                agent TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            );
INSERT INTO ov_gateway_keys VALUES('dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd','toy','t',1795317430.6059122085);
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
INSERT INTO ov_attempts VALUES(1,'toy','20260101-000000','req1',1,'t','2','fast','a','m','c','anthropic','anthropic',1,'ok',200,NULL,1.0,0.5,0.10000000000000000555,10,5,0,0,0,0,0.25,0);
CREATE INDEX ov_runs_lab ON ov_runs (lab, created_at);
CREATE INDEX ov_trials_agent ON ov_trials (run_id, agent, number);
CREATE INDEX ov_trials_status ON ov_trials (run_id, status);
CREATE INDEX ov_events_run ON ov_events (run_id, id);
CREATE INDEX ov_attempts_agent ON ov_attempts (lab, agent, started_at);
CREATE INDEX ov_attempts_trial ON ov_attempts (lab, trial);
COMMIT;
