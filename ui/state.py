"""Session-state keys, the workspace, demo data location and the remembered datasets.

All pages share the current dataset, model and device through ``st.session_state`` under
the :class:`Shared` keys, so a choice made on the home page holds everywhere.

Every session-state and widget key of the app is a member of one ``StrEnum`` per page or area
(:class:`Shared`, :class:`Auth`, :class:`Admin`, :class:`Home`, :class:`Browser`, :class:`Compare`,
:class:`Dashboard`, :class:`Editor`, :class:`Loop`, :class:`Predict`, :class:`Review`,
:class:`Train`). Write ``key=state.Editor.SAVE``, never the string, and add a new key as a member
of its page's enum. Keys that carry data in their name are f-strings on a member marked
*prefix* (``f"{state.Admin.ROLE}_{user}"``).

Example:
    >>> from ui import state
    >>> state.Review.NOTE == "review_note", f"{state.Admin.ROLE}_ana"
    (True, 'admin_role_ana')
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any

import streamlit as st

from engine.fsutil import atomic_write_json, read_json
from engine.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]

MAX_RECENT = 8


# ------------------------------------------------------------------------------------------ keys
# Values never change: AppTests and browser tests address widgets by them, and they live in
# session state (and, for the URL-synced ones, in links). Members are ``str``: write
# ``key=state.Review.NOTE`` or ``st.session_state[state.Shared.DATASET]``; a key carrying data in
# its name is an f-string on a member, ``f"{state.Admin.ROLE}_{user}"``.


class Shared(StrEnum):
    """Keys several pages read and write: the current dataset, model and device, the case open on the
    case pages, the reviewer's name, the URL sync and this session's case claim."""

    DATASET = "segwb_dataset"  # str path of the current dataset (folder or manifest)
    DATASET_OPTIONS = "segwb_dataset_options"  # dict of layout options
    MODEL = "segwb_model"  # weights name
    MODEL_FOR = "segwb_model_for"  # the dataset (root) the current model was last matched to
    MODEL_SWITCHED = "segwb_model_switched"  # (from, to, dataset) when a dataset change switched the model
    DEVICE = "segwb_device"  # "auto" | "cpu" | "cuda" | "mps"
    REFRESH = "segwb_refresh"  # int bumped to force re-indexing
    BROWSER_CASE = "segwb_browser_case"  # case id open in the browser / editor (the URL's ``case=``)
    SHOW_WEAK_MODELS = "segwb_show_weak_models"  # bool: list failed/useless models trained here in the pickers
    REVIEWER = "segwb_reviewer"  # reviewer / author name remembered for decisions and mask versions
    URL_SYNCED = "segwb_url_synced"  # {param: value} last written to / adopted from the URL
    URL_CASE_CHECK = "segwb_url_case_check"  # a case id adopted from the URL, until a page checked it exists
    CLAIMED = "segwb_claimed"  # (store path, dataset key, case id) this session holds a claim on


class Auth(StrEnum):
    """Sign-in (ui/auth.py)."""

    USER = "segwb_auth_user"  # name of the signed-in account (team mode / a store with accounts)
    VIA = "segwb_auth_via"  # "password" | "oidc"
    IDENTITY = "_segwb_identity"  # per-run cache of the gate's result (not a widget key)
    FORM = "auth_form"
    NAME = "auth_name"
    PASSWORD = "auth_password"
    SUBMIT = "auth_submit"
    OIDC = "auth_oidc"  # prefix: one button per OIDC provider
    SIGN_OUT = "auth_sign_out"
    SIGN_OUT_ALL = "auth_sign_out_all"
    NEW_PASSWORD = "auth_new_password"  # the forced password change
    NEW_PASSWORD2 = "auth_new_password2"
    CHANGE_FORM = "auth_change_form"
    CHANGE_SUBMIT = "auth_change_submit"


class Admin(StrEnum):
    """The Admin page (ui/admin_view.py)."""

    ADD = "admin_add"
    ADD_FORM = "admin_add_form"
    DATA_ROOTS = "admin_data_roots"
    DATA_ROOTS_BROAD = "admin_data_roots_broad"
    EXPORT_ROOTS = "admin_export_roots"
    EXPORT_ROOTS_BROAD = "admin_export_roots_broad"
    FLASH = "admin_flash"
    NEW_NAME = "admin_new_name"
    NEW_PASSWORD = "admin_new_password"
    NEW_ROLE = "admin_new_role"
    RESET = "admin_reset"
    RESET_PASSWORD = "admin_reset_password"  # prefix: one field per account
    ROLE = "admin_role"  # prefix: one selectbox per account
    SAVE_DATA_ROOTS = "admin_save_data_roots"
    SAVE_EXPORT_ROOTS = "admin_save_export_roots"
    SET_ROLE = "admin_set_role"
    TOGGLE = "admin_toggle"
    USER = "admin_user"
    END_SESSIONS = "admin_end_sessions"  # prefix: one button per signed-in user
    MUST_CHANGE = "admin_must_change"  # the "require a new password" button
    RESET_MUST_CHANGE = "admin_reset_must_change"  # prefix: "must change at next sign-in" with a reset
    UNLOCK = "admin_unlock"  # prefix: one button per locked account/address


class Home(StrEnum):
    """The home page (ui/home_view.py)."""

    DATASET_CHOICE = "home_dataset_choice"
    DATASET_PATH = "home_dataset_path"
    DEVICE = "home_device"
    GEN_DEMO = "gen_demo"
    LABELS = "home_labels"
    MODEL = "home_model"
    OPEN = "home_open"
    RESCAN = "home_rescan"
    SHOW_WEAK = "home_show_weak"


class Browser(StrEnum):
    """The Dataset browser (ui/browser_view.py, ui/nav.py, ui/loaders.py)."""

    CASE_NEXT = "browser_case_next"
    CASE_PREV = "browser_case_prev"
    CASE_SELECT = "browser_case_select"
    DESC = "browser_desc"
    EDA_AGE = "eda_age"
    EDA_ALL = "browser_eda_all"
    EDA_AREA = "eda_area"
    EDA_GROUPS = "eda_groups"
    EDA_PRESENCE = "eda_presence"
    EDA_SEX = "eda_sex"
    EDA_SPLIT = "eda_split"
    EDA_VIEW = "eda_view"
    EVAL = "browser_eval"
    EVALUATE = "browser_evaluate"
    FIRST = "browser_first"
    F_SUSPECT = "browser_f_suspect"  # the grid's filter by the label-error finder's suspect type
    F_AGE = "browser_f_age"
    F_AGE_IMP = "browser_f_age_imp"
    F_AGE_MIS = "browser_f_age_mis"
    F_AREA = "browser_f_area"
    F_CONFLICT = "browser_f_conflict"
    F_DICE = "browser_f_dice"
    F_GROUPS = "browser_f_groups"
    F_MASK = "browser_f_mask"
    F_REVIEW = "browser_f_review"
    F_SEX = "browser_f_sex"
    F_SPLIT = "browser_f_split"
    F_TEXT = "browser_f_text"
    F_VIEW = "browser_f_view"
    LAST = "browser_last"
    LIVE_PREDICTIONS = "browser_live_predictions"  # the cache of ui.loaders.predict_case
    MODEL = "browser_model"
    NEXT = "browser_next"
    OPEN = "browser_open"  # prefix: one button per thumbnail
    OVERLAY = "browser_overlay"
    PAGE = "browser_page"
    PER_PAGE = "browser_per_page"
    POLICY = "browser_policy"
    PREV = "browser_prev"
    REQUEST = "browser_request"  # {"case", "view", "model", "eval"} set by other pages (ui.nav.request_case)
    SORT = "browser_sort"
    SUSPECT_MAP = "browser_suspect_map"  # toggle: the disagreement map over the case's image
    VIEW = "browser_view"


class Compare(StrEnum):
    """The Compare models page (ui/compare_page.py, ui/predict_view.py)."""

    CASE = "segwb_compare_case"  # case id opened in the page's dataset views
    CASE_SELECT = "compare_case_select"
    DATASET_CASE_VIEW = "cmp_ds"  # prefix of the side-by-side view's widgets (dataset tab)
    DS_TTA = "compare_ds_tta"
    GO = "compare_go"
    MODE = "compare_mode"
    MODELS = "compare_models"
    N = "compare_n"
    ONE_IMAGE_VIEW = "cmp_one"  # prefix of the side-by-side view's widgets (one-image tab)
    OPEN_CASE = "compare_open_case"
    RUN = "segwb_compare_run"  # settings of the last dataset comparison the user started
    SEED = "compare_seed"
    SRC = "compare_src"
    TABLE = "compare_table"
    TABLES = "segwb_compare_tables"  # {settings key: DataFrame} of computed comparisons
    TABLE_LAST = "compare_table_last"
    TTA = "compare_tta"
    UPLOAD = "compare_upload"


class Dashboard(StrEnum):
    """The Metrics dashboard (ui/dashboard_view.py)."""

    BOX = "dash_box"
    CASES = "dash_cases"  # prefix: per model
    CM = "dash_cm"
    DIST_METRIC = "dash_dist_metric"
    EPOCH = "dash_epoch"
    EVAL = "dash_eval"
    EVALUATE = "dash_evaluate"
    EVAL_PENDING = "dash_eval_pending"
    GATE = "dash_gate"  # prefix: per model
    HIST = "dash_hist"
    MODEL = "dash_model"
    NOTICE = "dash_notice"
    OPEN = "dash_open"  # prefix: one button per worst case
    POLICY = "dash_policy"
    PR = "dash_pr"
    RECOMPUTE = "dash_recompute"
    ROC = "dash_roc"
    RUN = "dash_run"
    SLICE = "dash_slice"
    SLICE_BY = "dash_slice_by"
    SLICE_METRIC = "dash_slice_metric"
    SWEEP = "dash_sweep"
    SWEEP_GATE = "dash_sweep_gate"
    TTA = "dash_tta"
    WORST_N = "dash_worst_n"
    WORST_POS = "dash_worst_pos"


class Editor(StrEnum):
    """The Mask editor (ui/editor_view.py)."""

    APPLY = "editor_apply"
    AUTHOR = "editor_author"  # the author text input
    AUTO_APPLY = "editor_auto_apply"
    CANVAS_APPLIED = "editor_canvas_applied"  # (canvas key, [(object signature, pushed an edit)] applied)
    CANVAS_BG = "editor_canvas_bg"  # (canvas key, background image rendered when it was mounted)
    BRUSH = "editor_brush"  # prefix: one slider per image size
    CANVAS_WIDTH = "editor_canvas_width"
    CASE = "editor_case"  # the case picker
    CLASS = "editor_class"
    CONFLICT_DISCARD = "editor_conflict_discard"
    CONFLICT_MINE = "editor_conflict_mine"
    CONFLICT_UNION = "editor_conflict_union"
    DIFF_VERSION = "editor_diff_version"
    EMPTY = "editor_empty"
    EXPORT = "editor_export"
    EXPORT_COPY = "editor_export_copy"
    EXPORT_DECISIONS = "editor_export_decisions"
    EXPORT_DIR = "editor_export_dir"
    EXPORT_RESULT = "editor_export_result"
    FILL_AT = "editor_fill_at"
    FILL_HOLES = "editor_fill_holes"
    FILL_X = "editor_fill_x"  # prefix: one field per image width
    FILL_Y = "editor_fill_y"  # prefix: one field per image height
    FINDER_CANCEL = "editor_finder_cancel"
    FINDER_FOLDS = "editor_finder_folds"
    FINDER_JOB = "editor_finder_job"  # {"run_dir", "dataset", "weights", "config", "pending"}: cross-fit job
    FINDER_JOB_ACTIVE = "editor_finder_job_active"  # the cross-fit job was running on the last refresh
    FINDER_MODELS = "editor_finder_models"
    FINDER_OPEN = "editor_finder_open"  # keep the finder's expander open after an action
    FINDER_RESULT = "editor_finder_result"  # summary of the last finder run started here
    FINDER_RUN = "editor_finder_run"
    FLASH = "editor_flash"  # [(kind, text, monotonic time, case)]: messages about the last action
    HISTORY_TABLE = "editor_history_table"
    LINK_CASE = "editor_link_case"  # the Shared.BROWSER_CASE value already used as a deep link
    LOAD = "editor_load"
    MODEL = "editor_model"
    NEXT = "editor_next"
    NOTE = "editor_note_text"
    NOTE_CLEAR = "editor_note_clear"  # empty the note field on the next run
    PAN_X = "editor_pan_x"  # prefix: one slider per image width
    PAN_Y = "editor_pan_y"  # prefix: one slider per image height
    QUEUE_TABLE = "editor_queue_table"
    REDO = "editor_redo"
    RELEASED = "editor_released"  # case id whose claim was released by a save (until edited again)
    RESET = "editor_reset"
    REVERT = "editor_revert"
    REVERT_VERSION = "editor_revert_version"
    SAVE = "editor_save"
    SESSIONS = "editor_sessions"  # {(dataset, case_id): EditSession}
    SOURCE = "editor_source"
    STATE = "editor_state"  # prefix: one button per review state
    SUSPECT_MAP = "editor_suspect_map"  # toggle: the disagreement map of the case on screen
    SUSPECT_TYPES = "editor_suspect_types"  # the queue's filter by suspect type
    TOOL = "editor_tool"
    UNDO = "editor_undo"
    ZOOM = "editor_zoom"


class Loop(StrEnum):
    """The correct-retrain loop panel shared by Conflict review and the Mask editor (ui/loop_view.py).

    The panel's widgets end in ``_{where}`` (the page showing it): ``f"{Loop.START}_{where}"``."""

    AFTER = "loop_after"  # prefix
    BEFORE = "loop_before"  # prefix
    CANCEL = "loop_cancel"  # prefix
    DEFAULTS_FOR = "loop_defaults_for"  # prefix: the run whose before/after defaults were set
    EPOCHS = "loop_epochs"  # prefix
    IMPACT = "loop_impact"  # the last impact report dict (with "dataset")
    IMPACT_BTN = "loop_impact_btn"  # prefix
    JOB = "loop_job"  # {"run_dir", "name", "parent", "dataset"} of the last retrain started here
    JOB_ACTIVE = "loop_job_active"  # prefix: the job was running on the last refresh
    OPEN = "loop_open"  # keep the expander open after an action
    PARENT = "loop_parent"  # prefix: the model to fine-tune
    REFRESHED_FOR = "loop_refreshed_for"
    SIG_BTN = "loop_sig_btn"
    SIG_MAX = "loop_sig_max"
    SIG_MODELS = "loop_sig_models"
    START = "loop_start"  # prefix


class Predict(StrEnum):
    """The Predict page (ui/predict_page.py, ui/predict_view.py)."""

    ALPHA = "predict_alpha"
    CONTOUR = "predict_contour"
    CSV_KAGGLE = "predict_csv_kaggle"
    CSV_SIIM = "predict_csv_siim"
    DEMO = "predict_demo"  # prefix: one button per demo case
    DEMO_ALL = "predict_demo_all"
    DEMO_CLEAR = "predict_demo_clear"
    DEMO_INPUTS = "segwb_predict_demo_inputs"  # list[dict]: dataset images added with "try a demo image"
    DL_MASK = "predict_dl_mask"
    DL_OVERLAY = "predict_dl_overlay"
    DL_RLE_KAGGLE = "predict_dl_rle_kaggle"
    DL_RLE_SIIM = "predict_dl_rle_siim"
    FILL_HOLES = "predict_fill"  # prefix: per model
    GATE = "predict_gate"  # prefix: per model
    GATE_THRESHOLD = "predict_gate_thr"  # prefix: per model and gate
    HEAT_CLS = "predict_heat_cls"
    KEEP_LARGEST = "predict_keep"  # prefix: per model
    META_OPEN = "predict_meta_open"  # the lazy metadata expander is open
    MIN_AREA = "predict_minarea"  # prefix: per model
    MODEL = "predict_model"
    MODEL_RUNS = "segwb_predict_model_runs"  # int: forward passes run by this session
    PICK = "predict_pick"
    PRESENCE_THRESHOLD = "predict_pres"  # prefix: per model
    PROB_CACHE = "segwb_predict_prob_cache"  # OrderedDict[key, ProbResult] (LRU, bounded)
    RLE_OPEN = "predict_rle_open"  # the lazy RLE expander is open
    SELECTED = "segwb_predict_selected"  # image name to open in the detail view (set by demo buttons)
    SHOW_GT = "predict_show_gt"
    THRESHOLD = "predict_thr"  # prefix: per model
    TRIPLET = "predict_triplet"  # prefix: post-processing widgets, one per model
    TTA = "predict_tta"
    UPLOAD = "predict_upload"
    ZIP = "predict_zip"


class Review(StrEnum):
    """Conflict review (ui/review_view.py)."""

    BULK_APPLY = "review_bulk_apply"
    BULK_UNDO = "review_bulk_undo"
    BULK_CONFIRM = "review_bulk_confirm"
    CONFIRM = "review_confirm"
    CURRENT = "review_current"  # "a\tb" of the pair on screen (the URL's ``pair=``)
    DECISION = "review_d"  # prefix: one button per decision
    DOWNLOAD = "review_download"
    EDIT = "review_edit"  # prefix: per case of the pair
    EXPORT = "review_export"
    EXPORT_BTN = "review_export_btn"
    F_CATEGORY = "review_f_category"
    F_STATE = "review_f_state"
    F_SUBJECT = "review_f_subject"
    JUMP = "review_jump"
    LINK_CASE = "review_link_case"  # the Shared.BROWSER_CASE value already used as a deep link
    MANIFEST_PATH = "review_manifest_path"
    NEXT = "review_next"
    NEXT_OPEN = "review_next_open"
    NOTE = "review_note"
    NOTE_CLEAR = "review_note_clear"
    NOTICE = "review_notice"
    OPACITY = "review_opacity"
    OPEN = "review_open"  # prefix: per case of the pair
    OVERRIDE = "review_override"
    POLICY = "review_policy"
    PREV = "review_prev"
    QUEUE_TABLE = "review_queue_table"
    RADIUS = "review_radius"
    RELOAD = "review_reload"
    REQUEST_CASE = "review_request_case"  # a case id set by a linking page: open this case's pair next time
    REVIEWER = "review_reviewer"  # the text input's own key (dropped when the page is left)
    SCOPE = "review_scope"
    SEARCH = "review_search"
    SEARCHED = "review_searched"
    SHOWN = "review_shown"  # ("a\tb", decision event id or None) as rendered by the last run
    SHOW_MASKS = "review_show_masks"
    SSIM_H = "review_ssim_h"
    SSIM_W = "review_ssim_w"
    STALE = "review_stale"  # a refused (stale) decision waiting for reload / override
    THRESHOLD = "review_threshold"
    UNDO = "review_undo"
    UNDO_LAST = "review_undo_last"  # undo this session's last decision wherever it was made
    LAST = "review_last_decision"  # (a, b, event id, label) of this session's last decision


class Train(StrEnum):
    """The Train page (ui/train_view.py): its form, the run panel and the runs table."""

    AMP = "train_amp"
    ARCH = "train_arch"
    AUG = "train_aug"  # prefix: one checkbox per augmentation switch and preset
    AUGMENT = "train_augment"
    AUTO_CLASSES = "train_auto_classes"
    AUTO_REFRESH = "train_auto_refresh"
    BASE_CHANNELS = "train_base_channels"
    BATCH = "train_batch"
    CANCEL = "train_cancel"
    CHART = "train_chart"
    CLASSES = "train_classes"
    CLASSIFIER = "train_classifier"
    DEVICE = "train_device"
    ENCODER = "train_encoder"
    EPOCHS = "train_epochs"
    FOLDS = "train_folds"
    HEIGHT = "train_height"
    LOSS = "train_loss"
    LR = "train_lr"
    MEDIAN = "train_median"
    NAME = "train_name"
    REPLACE = "train_replace"  # replace a workspace model of the same name
    NOTICE = "train_notice"
    PATH = "train_path"
    PATIENCE = "train_patience"
    POSITIVE_ONLY = "train_positive_only"
    PRESENCE = "train_presence"
    REFRESH = "train_refresh"
    RESIZE = "train_resize"
    RUN = "train_run"  # selected run folder name
    RUN_PENDING = "train_run_pending"  # run to select on the next rerun (set by Start)
    SCHEDULER = "train_scheduler"
    SEED = "train_seed"
    SHOW_JSON = "train_show_json"
    SOURCE = "train_source"
    START = "train_start"
    TASK = "train_task"
    USE_MODEL = "train_use_model"
    VAL_FOLD = "train_val_fold"
    WIDTH = "train_width"


#: Every key enum (a test checks that no two members share a value).
KEY_ENUMS: tuple[type[StrEnum], ...] = (Shared, Auth, Admin, Home, Browser, Compare, Dashboard, Editor, Loop,
                                        Predict, Review, Train)


_UPLOADS_CLEANED: dict[Path, float] = {}
#: seconds between two clean-ups of expired uploads triggered by page loads
UPLOAD_CLEANUP_EVERY_S = 3600.0


def workspace() -> Workspace:
    """The engine workspace, resolved like the CLI and ``make`` resolve it
    (:func:`engine.workspace.resolve_root`: ``$SEGWB_WORKSPACE``, else this checkout's ``.workspace``,
    else ``~/.cache/segwb``), so the app uses the store and secret ``python -m engine`` wrote. The first
    use in a server process (app start), and then at most hourly, deletes expired uploads
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
    except Exception:  # noqa: BLE001 - an unreadable list of recent datasets counts as empty
        return []
    return [p for p in items if isinstance(p, str)][:MAX_RECENT] if isinstance(items, list) else []


def remember_dataset(path: str) -> None:
    items = [p for p in recent_datasets() if p != path]
    try:
        atomic_write_json(_recent_file(), [path] + items[: MAX_RECENT - 1])
    except OSError:
        pass


def get(key: str, default: Any = None) -> Any:
    """``st.session_state.get(key, default)``."""
    return st.session_state.get(key, default)


def put(key: str, value: Any) -> None:
    """``st.session_state[key] = value``."""
    st.session_state[key] = value


def current_dataset_path() -> str | None:
    """The dataset chosen on the home page, else the demo nerve phantom when it exists."""
    path = st.session_state.get(Shared.DATASET)
    if path:
        return str(path)
    from engine.serving import is_team_mode

    if is_team_mode():  # team mode opens only what an admin allowed: no implicit default
        return None
    demo = demo_root() / "nerve"
    return str(demo) if demo.is_dir() else None


def current_model() -> str | None:
    return st.session_state.get(Shared.MODEL)


def current_device() -> str:
    return st.session_state.get(Shared.DEVICE, "auto")
