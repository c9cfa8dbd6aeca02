"""Session-state keys, the workspace, demo data location and the remembered datasets.

All pages share the current dataset, model and device through ``st.session_state`` under
the keys below, so a choice made on the home page holds everywhere.

Every session-state and widget key of the app is a named constant here: the shared keys
first, then one generated block of per-page keys (``EDITOR_CASE = "editor_case"``). Write
``key=state.EDITOR_SAVE``, never the string (a re-runnable script rewrites literals into
this block). Keys that carry data in their name (``f"editor_state_{s}"``) stay f-strings,
built on a constant prefix where there is one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import streamlit as st

from engine.fsutil import atomic_write_json, read_json
from engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]

DATASET = "segwb_dataset"          # str path of the current dataset (folder or manifest)
DATASET_OPTIONS = "segwb_dataset_options"  # dict of layout options
MODEL = "segwb_model"              # weights name
DEVICE = "segwb_device"            # "auto" | "cpu" | "cuda" | "mps"
REFRESH = "segwb_refresh"          # int bumped to force re-indexing
BROWSER_CASE = "segwb_browser_case"  # case id opened in the browser's detail view
REVIEWER = "segwb_reviewer"        # reviewer / author name remembered for decisions and mask versions

MAX_RECENT = 8

# Sign-in, roles and the URL (ui/auth.py, ui/context.py, the Admin page).
AUTH_USER = "segwb_auth_user"      # name of the signed-in account (team mode / a store with accounts)
AUTH_VIA = "segwb_auth_via"        # "password" | "oidc"
AUTH_FORM = "auth_form"
AUTH_NAME = "auth_name"
AUTH_PASSWORD = "auth_password"
AUTH_SUBMIT = "auth_submit"
AUTH_OIDC = "auth_oidc"
AUTH_SIGN_OUT = "auth_sign_out"
URL_SYNCED = "segwb_url_synced"    # {param: value} last written to / adopted from the URL
CLAIMED = "segwb_claimed"          # (store path, dataset key, case id) this session holds a claim on
ADMIN_NEW_NAME = "admin_new_name"
ADMIN_NEW_ROLE = "admin_new_role"
ADMIN_NEW_PASSWORD = "admin_new_password"
ADMIN_ADD = "admin_add"
ADMIN_ADD_FORM = "admin_add_form"
ADMIN_FLASH = "admin_flash"
ADMIN_USER = "admin_user"
ADMIN_ROLE = "admin_role"
ADMIN_SET_ROLE = "admin_set_role"
ADMIN_TOGGLE = "admin_toggle"
ADMIN_RESET_PASSWORD = "admin_reset_password"
ADMIN_RESET = "admin_reset"
ADMIN_DATA_ROOTS = "admin_data_roots"
ADMIN_SAVE_DATA_ROOTS = "admin_save_data_roots"
ADMIN_EXPORT_ROOTS = "admin_export_roots"
ADMIN_SAVE_EXPORT_ROOTS = "admin_save_export_roots"
REVIEW_STALE = "review_stale"      # a refused (stale) decision waiting for reload / override
REVIEW_OVERRIDE = "review_override"
REVIEW_SHOWN = "review_shown"      # ("a\tb", decision event id or None) as rendered by the last run
REVIEW_RELOAD = "review_reload"
EDITOR_CONFLICT_UNION = "editor_conflict_union"
EDITOR_RELEASED = "editor_released"  # case id whose claim was released by a save (until edited again)


_UPLOADS_CLEANED: dict[Path, float] = {}
#: seconds between two clean-ups of expired uploads triggered by page loads
UPLOAD_CLEANUP_EVERY_S = 3600.0


def workspace() -> Workspace:
    """The engine workspace ($SEGWB_WORKSPACE, set by `make run`, or ~/.cache/segwb). The first use
    in a server process (app start), and then at most hourly, deletes expired uploads
    (:func:`engine.phi.cleanup_uploads`; each upload also does)."""
    import time

    ws = Workspace()
    now = time.monotonic()
    if now - _UPLOADS_CLEANED.get(ws.root, -UPLOAD_CLEANUP_EVERY_S) >= UPLOAD_CLEANUP_EVERY_S:
        _UPLOADS_CLEANED[ws.root] = now
        from engine.errors import WorkbenchError
        from engine.phi import cleanup_uploads

        try:
            cleanup_uploads(ws.root)
        except (OSError, WorkbenchError):
            pass  # a bad TTL setting is reported on the next upload
    return ws


def demo_root() -> Path:
    """Where the demo phantoms live: $SEGWB_DEMO_DATA or <repo>/demo_data."""
    env = os.environ.get("SEGWB_DEMO_DATA")
    return Path(env).expanduser() if env else REPO / "demo_data"


def demo_datasets() -> dict[str, Path]:
    """The built-in demo datasets (label → folder), whether or not generated yet."""
    root = demo_root()
    return {"Demo: ultrasound nerve phantom (Kaggle UNS layout)": root / "nerve",
            "Demo: chest X-ray phantom (SIIM DICOM layout)": root / "ptx"}


def _recent_file() -> Path:
    return workspace().subdir("ui") / "recent_datasets.json"


def recent_datasets() -> list[str]:
    """Recently opened dataset paths, newest first (persisted in the workspace)."""
    try:
        items = read_json(_recent_file())
    except Exception:
        return []
    return [p for p in items if isinstance(p, str)][:MAX_RECENT] if isinstance(items, list) else []


def remember_dataset(path: str) -> None:
    items = [p for p in recent_datasets() if p != path]
    try:
        atomic_write_json(_recent_file(), [path] + items[: MAX_RECENT - 1])
    except OSError:
        pass


def get(key: str, default: Any = None) -> Any:
    return st.session_state.get(key, default)


def set(key: str, value: Any) -> None:  # noqa: A001 - mirrors st.session_state
    st.session_state[key] = value


def current_dataset_path() -> str | None:
    """The dataset chosen on the home page, else the demo nerve phantom when it exists."""
    path = st.session_state.get(DATASET)
    if path:
        return str(path)
    from engine.serving import is_team_mode

    if is_team_mode():  # team mode opens only what an admin allowed: no implicit default
        return None
    demo = demo_root() / "nerve"
    return str(demo) if demo.is_dir() else None


def current_model() -> str | None:
    return st.session_state.get(MODEL)


def current_device() -> str:
    return st.session_state.get(DEVICE, "auto")


# ---- widget and page keys (generated by state_keys.py; edit by re-running it) ----
# Widget keys and per-page session-state keys. Values never change (AppTests and saved
# sessions use them); add new keys here, or write the literal and re-run the script.
BROWSER_CASE_NEXT        = "browser_case_next"
BROWSER_CASE_PREV        = "browser_case_prev"
BROWSER_CASE_SELECT      = "browser_case_select"
BROWSER_DESC             = "browser_desc"
BROWSER_EDA_ALL          = "browser_eda_all"
BROWSER_EVAL             = "browser_eval"
BROWSER_EVALUATE         = "browser_evaluate"
BROWSER_FIRST            = "browser_first"
BROWSER_F_AGE            = "browser_f_age"
BROWSER_F_AGE_IMP        = "browser_f_age_imp"
BROWSER_F_AGE_MIS        = "browser_f_age_mis"
BROWSER_F_AREA           = "browser_f_area"
BROWSER_F_CONFLICT       = "browser_f_conflict"
BROWSER_F_DICE           = "browser_f_dice"
BROWSER_F_GROUPS         = "browser_f_groups"
BROWSER_F_MASK           = "browser_f_mask"
BROWSER_F_REVIEW         = "browser_f_review"
BROWSER_F_SEX            = "browser_f_sex"
BROWSER_F_SPLIT          = "browser_f_split"
BROWSER_F_TEXT           = "browser_f_text"
BROWSER_F_VIEW           = "browser_f_view"
BROWSER_LAST             = "browser_last"
BROWSER_LIVE_PREDICTIONS = "browser_live_predictions"
BROWSER_MODEL            = "browser_model"
BROWSER_NEXT             = "browser_next"
BROWSER_OVERLAY          = "browser_overlay"
BROWSER_PAGE             = "browser_page"
BROWSER_PER_PAGE         = "browser_per_page"
BROWSER_POLICY           = "browser_policy"
BROWSER_PREV             = "browser_prev"
BROWSER_REQUEST          = "browser_request"
BROWSER_SORT             = "browser_sort"
BROWSER_VIEW             = "browser_view"
CMP_DS                   = "cmp_ds"
CMP_ONE                  = "cmp_one"
COMPARE_DS_TTA           = "compare_ds_tta"
COMPARE_GO               = "compare_go"
COMPARE_MODE             = "compare_mode"
COMPARE_MODELS           = "compare_models"
COMPARE_N                = "compare_n"
COMPARE_OPEN_CASE        = "compare_open_case"
COMPARE_SEED             = "compare_seed"
COMPARE_SRC              = "compare_src"
COMPARE_TABLE            = "compare_table"
COMPARE_TABLE_LAST       = "compare_table_last"
COMPARE_TTA              = "compare_tta"
COMPARE_UPLOAD           = "compare_upload"
DASH_BOX                 = "dash_box"
DASH_CM                  = "dash_cm"
DASH_DIST_METRIC         = "dash_dist_metric"
DASH_EPOCH               = "dash_epoch"
DASH_EVAL                = "dash_eval"
DASH_EVALUATE            = "dash_evaluate"
DASH_EVAL_PENDING        = "dash_eval_pending"
DASH_HIST                = "dash_hist"
DASH_MODEL               = "dash_model"
DASH_NOTICE              = "dash_notice"
DASH_POLICY              = "dash_policy"
DASH_PR                  = "dash_pr"
DASH_RECOMPUTE           = "dash_recompute"
DASH_ROC                 = "dash_roc"
DASH_RUN                 = "dash_run"
DASH_SLICE               = "dash_slice"
DASH_SLICE_BY            = "dash_slice_by"
DASH_SLICE_METRIC        = "dash_slice_metric"
DASH_SWEEP               = "dash_sweep"
DASH_SWEEP_GATE          = "dash_sweep_gate"
DASH_TTA                 = "dash_tta"
DASH_WORST_N             = "dash_worst_n"
DASH_WORST_POS           = "dash_worst_pos"
EDA_AGE                  = "eda_age"
EDA_AREA                 = "eda_area"
EDA_GROUPS               = "eda_groups"
EDA_PRESENCE             = "eda_presence"
EDA_SEX                  = "eda_sex"
EDA_SPLIT                = "eda_split"
EDA_VIEW                 = "eda_view"
EDITOR_APPLY             = "editor_apply"
EDITOR_AUTHOR            = "editor_author"
EDITOR_AUTO_APPLY        = "editor_auto_apply"
EDITOR_BRUSH             = "editor_brush"
EDITOR_CANVAS_WIDTH      = "editor_canvas_width"
EDITOR_CASE              = "editor_case"
EDITOR_CLASS             = "editor_class"
EDITOR_CONFLICT_DISCARD  = "editor_conflict_discard"
EDITOR_CONFLICT_MINE     = "editor_conflict_mine"
EDITOR_CONFLICT_VIEW     = "editor_conflict_view"
EDITOR_DIFF_VERSION      = "editor_diff_version"
EDITOR_EMPTY             = "editor_empty"
EDITOR_EXPORT            = "editor_export"
EDITOR_EXPORT_COPY       = "editor_export_copy"
EDITOR_EXPORT_DECISIONS  = "editor_export_decisions"
EDITOR_EXPORT_DIR        = "editor_export_dir"
EDITOR_EXPORT_RESULT     = "editor_export_result"
EDITOR_FILL_AT           = "editor_fill_at"
EDITOR_FILL_HOLES        = "editor_fill_holes"
EDITOR_FILL_X            = "editor_fill_x"
EDITOR_FILL_Y            = "editor_fill_y"
EDITOR_FLASH             = "editor_flash"
EDITOR_HISTORY_TABLE     = "editor_history_table"
EDITOR_LINK_CASE         = "editor_link_case"
EDITOR_LOAD              = "editor_load"
EDITOR_MODEL             = "editor_model"
EDITOR_NEXT              = "editor_next"
EDITOR_NOTE              = "editor_note_"
EDITOR_PAN_X             = "editor_pan_x"
EDITOR_PAN_Y             = "editor_pan_y"
EDITOR_QUEUE_TABLE       = "editor_queue_table"
EDITOR_REDO              = "editor_redo"
EDITOR_RESET             = "editor_reset"
EDITOR_REVERT            = "editor_revert"
EDITOR_REVERT_VERSION    = "editor_revert_version"
EDITOR_SAVE              = "editor_save"
EDITOR_SESSIONS          = "editor_sessions"
EDITOR_SOURCE            = "editor_source"
EDITOR_TOOL              = "editor_tool"
EDITOR_UNDO              = "editor_undo"
EDITOR_ZOOM              = "editor_zoom"
GEN_DEMO                 = "gen_demo"
HOME_DATASET_CHOICE      = "home_dataset_choice"
HOME_DATASET_PATH        = "home_dataset_path"
HOME_DEVICE              = "home_device"
HOME_LABELS              = "home_labels"
HOME_MODEL               = "home_model"
HOME_OPEN                = "home_open"
HOME_RESCAN              = "home_rescan"
LOOP_IMPACT              = "loop_impact"
LOOP_JOB                 = "loop_job"
LOOP_OPEN                = "loop_open"
LOOP_REFRESHED_FOR       = "loop_refreshed_for"
PREDICT_ALPHA            = "predict_alpha"
PREDICT_CONTOUR          = "predict_contour"
PREDICT_CSV_KAGGLE       = "predict_csv_kaggle"
PREDICT_CSV_SIIM         = "predict_csv_siim"
PREDICT_DEMO_ALL         = "predict_demo_all"
PREDICT_DEMO_CLEAR       = "predict_demo_clear"
PREDICT_DL_MASK          = "predict_dl_mask"
PREDICT_DL_OVERLAY       = "predict_dl_overlay"
PREDICT_DL_RLE_KAGGLE    = "predict_dl_rle_kaggle"
PREDICT_DL_RLE_SIIM      = "predict_dl_rle_siim"
PREDICT_HEAT_CLS         = "predict_heat_cls"
PREDICT_META_OPEN        = "predict_meta_open"
PREDICT_MODEL            = "predict_model"
PREDICT_PICK             = "predict_pick"
PREDICT_RLE_OPEN         = "predict_rle_open"
PREDICT_SHOW_GT          = "predict_show_gt"
PREDICT_TTA              = "predict_tta"
PREDICT_UPLOAD           = "predict_upload"
PREDICT_ZIP              = "predict_zip"
REVIEW_BULK_APPLY        = "review_bulk_apply"
REVIEW_BULK_UNDO         = "review_bulk_undo"
REVIEW_CONFIRM           = "review_confirm"
REVIEW_CURRENT           = "review_current"
REVIEW_DOWNLOAD          = "review_download"
REVIEW_EXPORT            = "review_export"
REVIEW_EXPORT_BTN        = "review_export_btn"
REVIEW_F_CATEGORY        = "review_f_category"
REVIEW_F_STATE           = "review_f_state"
REVIEW_F_SUBJECT         = "review_f_subject"
REVIEW_JUMP              = "review_jump"
REVIEW_LINK_CASE         = "review_link_case"
REVIEW_MANIFEST_PATH     = "review_manifest_path"
REVIEW_NEXT              = "review_next"
REVIEW_NEXT_OPEN         = "review_next_open"
REVIEW_NOTE              = "review_note"
REVIEW_NOTE_CLEAR        = "review_note_clear"
REVIEW_NOTICE            = "review_notice"
REVIEW_OPACITY           = "review_opacity"
REVIEW_POLICY            = "review_policy"
REVIEW_PREV              = "review_prev"
REVIEW_QUEUE_TABLE       = "review_queue_table"
REVIEW_RADIUS            = "review_radius"
REVIEW_REQUEST_CASE      = "review_request_case"
REVIEW_REVIEWER          = "review_reviewer"
REVIEW_SCOPE             = "review_scope"
REVIEW_SEARCH            = "review_search"
REVIEW_SEARCHED          = "review_searched"
REVIEW_SHOW_MASKS        = "review_show_masks"
REVIEW_SSIM_H            = "review_ssim_h"
REVIEW_SSIM_W            = "review_ssim_w"
REVIEW_THRESHOLD         = "review_threshold"
REVIEW_UNDO              = "review_undo"
SEGWB_COMPARE_TABLES     = "segwb_compare_tables"
SEGWB_IDENTITY           = "_segwb_identity"
SEGWB_PREDICT_MODEL_RUNS = "segwb_predict_model_runs"
SEGWB_PREDICT_PROB_CACHE = "segwb_predict_prob_cache"
TRAIN_AUTO_REFRESH       = "train_auto_refresh"
TRAIN_CHART              = "train_chart"
TRAIN_NOTICE             = "train_notice"
TRAIN_RUN                = "train_run"
TRAIN_RUN_PENDING        = "train_run_pending"
TRAIN_SHOW_JSON          = "train_show_json"
# ---- end of generated keys ----
