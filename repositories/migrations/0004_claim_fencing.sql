-- 0004: fencing tokens for task claims, and outbox rows the janitor takes before it resends them.
-- Every claim draws a new claim_token; every outcome write of that delivery (finish, release for
-- retry, hand-back, lease renewal) must present it, so a delivery whose lease lapsed and was taken
-- over by another can no longer change the task.

ALTER TABLE tasks ADD COLUMN claim_token uuid;
ALTER TABLE outbox ADD COLUMN send_attempted_at timestamptz;

DROP FUNCTION finish_task(text, text, jsonb, text);

-- With a claim token (a delivery recording its outcome) the task must still be processing under
-- that very claim: a delivery whose lease lapsed and was taken over changes nothing (fencing).
-- Without one (janitor, poison reconciliation) any unfinished task is finished.
CREATE FUNCTION finish_task(p_task_id text, p_status text, p_result jsonb, p_error text, p_claim_token uuid)
RETURNS TABLE (changed boolean, job_id text, stage integer, task_count integer,
               completed_count integer, failed_count integer, skipped_count integer, closed_stage boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_job_id text;
    v_stage integer;
    v_row stages%ROWTYPE;
BEGIN
    IF p_status NOT IN ('completed', 'failed', 'skipped') THEN
        RAISE EXCEPTION 'finish_task: invalid status %', p_status USING ERRCODE = '22023';
    END IF;

    UPDATE tasks AS t
       SET status = p_status, result = p_result, error = p_error,
           completed_at = now(), updated_at = now(), lease_expires_at = NULL, claim_token = NULL
     WHERE t.task_id = p_task_id
       AND CASE WHEN p_claim_token IS NULL THEN t.status IN ('queued', 'processing')
                ELSE t.status = 'processing' AND t.claim_token = p_claim_token END
    RETURNING t.job_id, t.stage INTO v_job_id, v_stage;

    IF NOT FOUND THEN
        RETURN QUERY SELECT false, t.job_id, t.stage, s.task_count, s.completed_count,
                            s.failed_count, s.skipped_count, false
                       FROM tasks AS t JOIN stages AS s USING (job_id, stage)
                      WHERE t.task_id = p_task_id;
        RETURN;
    END IF;

    UPDATE stages AS s
       SET completed_count = s.completed_count + (p_status = 'completed')::integer,
           failed_count    = s.failed_count    + (p_status = 'failed')::integer,
           skipped_count   = s.skipped_count   + (p_status = 'skipped')::integer
     WHERE s.job_id = v_job_id AND s.stage = v_stage
    RETURNING s.* INTO v_row;

    IF v_row.completed_count + v_row.failed_count + v_row.skipped_count = v_row.task_count
       AND v_row.status = 'processing' THEN
        UPDATE stages AS s SET status = 'completed', completed_at = now()
         WHERE s.job_id = v_job_id AND s.stage = v_stage;
        RETURN QUERY SELECT true, v_job_id, v_stage, v_row.task_count, v_row.completed_count,
                            v_row.failed_count, v_row.skipped_count, true;
    ELSE
        RETURN QUERY SELECT true, v_job_id, v_stage, v_row.task_count, v_row.completed_count,
                            v_row.failed_count, v_row.skipped_count, false;
    END IF;
END;
$$;
