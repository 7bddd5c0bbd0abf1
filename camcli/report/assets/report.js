/* camcli report: the grid (index.html) and the page of one image (image.html?i=N).
 *
 * Data comes from data.js (window.CAMCLI_REPORT, one compact entry per image) and, for the
 * page of one image, details/K.js (window.CAMCLI_DETAILS[K], full entries in chunks): plain
 * scripts, because browsers refuse fetch() of local files. The filters, sort order and page
 * live in the URL's fragment, so links, reloads and the back button keep them.
 * Text from records is only ever set with textContent (never parsed as HTML).
 */
(function () {
  "use strict";

  var DATA = window.CAMCLI_REPORT;
  var ITEMS = DATA.items;
  var DEFAULTS = { mis: false, status: "", pred: "", label: "", min: 0, max: 1, text: "",
    sort: "path", size: 100, page: 1 };

  function number(text, fallback) {
    var value = parseFloat(text);
    return isFinite(value) ? value : fallback;
  }

  function readState(hash) {
    var params = new URLSearchParams((hash || "").replace(/^#/, ""));
    return {
      mis: params.get("mis") === "1",
      status: params.get("status") || "",
      pred: params.get("pred") || "",
      label: params.get("label") || "",
      min: number(params.get("min"), 0),
      max: number(params.get("max"), 1),
      text: params.get("q") || "",
      sort: params.get("sort") || "path",
      size: Math.max(1, Math.floor(number(params.get("size"), 100))),
      page: Math.max(1, Math.floor(number(params.get("page"), 1)))
    };
  }

  function writeState(state) {
    var params = new URLSearchParams();
    if (state.mis) params.set("mis", "1");
    if (state.status) params.set("status", state.status);
    if (state.pred) params.set("pred", state.pred);
    if (state.label) params.set("label", state.label);
    if (state.min > 0) params.set("min", String(state.min));
    if (state.max < 1) params.set("max", String(state.max));
    if (state.text) params.set("q", state.text);
    if (state.sort !== "path") params.set("sort", state.sort);
    if (state.size !== DEFAULTS.size) params.set("size", String(state.size));
    if (state.page > 1) params.set("page", String(state.page));
    return params.toString();
  }

  function matches(item, state) {
    if (state.mis && item.c !== false) return false;
    if (state.status && item.s !== state.status) return false;
    if (state.pred && item.p !== state.pred) return false;
    if (state.label && item.l !== state.label) return false;
    if (state.min > 0 || state.max < 1) {
      if (typeof item.q !== "number" || item.q < state.min || item.q > state.max) return false;
    }
    if (state.text && item.i.toLowerCase().indexOf(state.text.toLowerCase()) < 0) return false;
    return true;
  }

  /* Positions in ITEMS that pass the filters, in the chosen order. */
  function selection(state) {
    var chosen = [];
    for (var i = 0; i < ITEMS.length; i++) {
      if (matches(ITEMS[i], state)) chosen.push(i);
    }
    if (state.sort === "conf-asc" || state.sort === "conf-desc") {
      var sign = state.sort === "conf-asc" ? 1 : -1;
      chosen.sort(function (a, b) {
        var qa = ITEMS[a].q, qb = ITEMS[b].q;
        var ha = typeof qa === "number", hb = typeof qb === "number";
        if (ha !== hb) return ha ? -1 : 1; // entries without a probability last
        if (ha && qa !== qb) return sign * (qa - qb);
        return a - b;
      });
    }
    return chosen;
  }

  function percent(q) {
    return (100 * q).toFixed(1) + " %";
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function verdictClass(item) {
    if (item.s === "error") return "error";
    if (item.c === true) return "correct";
    if (item.c === false) return "wrong";
    return "unknown";
  }

  function runNotice() {
    var run = DATA.run || {};
    var partial = run.partial_indexes || [];
    var summaries = run.summaries || [];
    var unfinished = summaries.filter(function (s) { return s.status !== "complete"; });
    if (partial.length) {
      return "A run is still going or was interrupted (" + partial.join(", ") +
        "): this report shows the " + ITEMS.length + " images found when it was written, " +
        DATA.generated + ". Write it again to see more.";
    }
    if (!summaries.length) return "No run summary (run.json) yet: the run may still be going.";
    if (unfinished.length) {
      return "Run status: " + unfinished.map(function (s) {
        return s.file + " " + s.status;
      }).join(", ") + ". The report shows what exists.";
    }
    return "";
  }

  /* ---- the grid --------------------------------------------------------------------- */

  function fillSelect(select, key) {
    var counts = {};
    ITEMS.forEach(function (item) {
      var value = item[key];
      if (value !== undefined) counts[value] = (counts[value] || 0) + 1;
    });
    Object.keys(counts).sort(function (a, b) {
      return a.localeCompare(b);
    }).forEach(function (value) {
      var option = element("option", null, value + " (" + counts[value] + ")");
      option.value = value;
      select.appendChild(option);
    });
  }

  function card(position, state) {
    var item = ITEMS[position];
    var link = element("a", "card " + verdictClass(item));
    link.href = "image.html?i=" + position + "#" + writeState(state);
    link.dataset.image = item.i;
    if (item.t) {
      var img = element("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = item.i;
      img.width = item.w;
      img.height = item.h;
      img.src = item.t;
      link.appendChild(img);
    } else {
      link.appendChild(element("div", "nothumb", item.s === "error" ? "failed" : "no picture"));
    }
    var caption = element("div", "caption");
    var path = element("div", "path", item.i);
    path.title = item.i;
    caption.appendChild(path);
    if (item.s === "error") {
      caption.appendChild(element("div", "message", item.e || "failed"));
    } else {
      var top = element("div", "top1");
      top.appendChild(element("b", null, item.p !== undefined ? item.p : "(no prediction)"));
      if (typeof item.q === "number") top.appendChild(element("span", "prob", percent(item.q)));
      caption.appendChild(top);
      if (item.l !== undefined) caption.appendChild(element("div", "label", "label: " + item.l));
    }
    link.appendChild(caption);
    return link;
  }

  function setForm(state) {
    document.getElementById("f-mis").checked = state.mis;
    document.getElementById("f-status").value = state.status;
    document.getElementById("f-pred").value = state.pred;
    document.getElementById("f-label").value = state.label;
    document.getElementById("f-min").value = state.min;
    document.getElementById("f-max").value = state.max;
    document.getElementById("f-text").value = state.text;
    document.getElementById("f-sort").value = state.sort;
    document.getElementById("f-size").value = String(state.size);
  }

  function formState() {
    return {
      mis: document.getElementById("f-mis").checked,
      status: document.getElementById("f-status").value,
      pred: document.getElementById("f-pred").value,
      label: document.getElementById("f-label").value,
      min: number(document.getElementById("f-min").value, 0),
      max: number(document.getElementById("f-max").value, 1),
      text: document.getElementById("f-text").value.trim(),
      sort: document.getElementById("f-sort").value,
      size: Math.max(1, parseInt(document.getElementById("f-size").value, 10) || 100),
      page: 1
    };
  }

  function go(state) {
    // The form shows the new state at once: hashchange (which redraws) fires later, and a
    // change made before it (a quick click after "reset") must not read the old form.
    setForm(state);
    var hash = writeState(state);
    if (location.hash.replace(/^#/, "") === hash) renderGrid();
    else location.hash = hash;
  }

  function renderGrid() {
    var drawing = location.hash.replace(/^#/, "");
    var state = readState(drawing);
    setForm(state);
    var chosen = selection(state);
    var pages = Math.max(1, Math.ceil(chosen.length / state.size));
    var page = Math.min(state.page, pages);
    var first = (page - 1) * state.size;
    var shown = chosen.slice(first, first + state.size);
    var grid = document.getElementById("grid");
    var fragment = document.createDocumentFragment();
    shown.forEach(function (position) {
      fragment.appendChild(card(position, Object.assign({}, state, { page: page })));
    });
    grid.textContent = "";
    grid.appendChild(fragment);
    var count = chosen.length ?
      "images " + (first + 1) + "-" + (first + shown.length) + " of " + chosen.length :
      "no image matches";
    if (chosen.length !== ITEMS.length) count += " (filtered from " + ITEMS.length + ")";
    document.getElementById("count").textContent = count;
    document.querySelectorAll(".page-info").forEach(function (node) {
      node.textContent = "page " + page + " of " + pages;
    });
    document.querySelectorAll(".pager .prev").forEach(function (button) {
      button.disabled = page <= 1;
      button.onclick = function () { go(Object.assign({}, state, { page: page - 1 })); };
    });
    document.querySelectorAll(".pager .next").forEach(function (button) {
      button.disabled = page >= pages;
      button.onclick = function () { go(Object.assign({}, state, { page: page + 1 })); };
    });
    // The hash changes before the grid is drawn (hashchange fires later): mark the state the
    // grid now shows, so that scripts and tests can wait for the drawing, not the address.
    grid.dataset.drawn = drawing;
  }

  function initGrid() {
    document.getElementById("title").textContent = "camcli report: " + DATA.title;
    document.title = "camcli report: " + DATA.title;
    var ok = 0, errors = 0, wrong = 0, labelled = 0;
    ITEMS.forEach(function (item) {
      if (item.s === "error") errors++; else ok++;
      if (item.c === false) wrong++;
      if (item.c === true || item.c === false) labelled++;
    });
    var summary = ITEMS.length + " images: " + ok + " explained, " + errors + " failed";
    if (labelled) summary += "; " + wrong + " of " + labelled + " labelled images misclassified";
    document.getElementById("summary").textContent = summary + ". Written " + DATA.generated + ".";
    // camcli evaluate's and camcli summarize's results, when they are here: link their pages.
    if (DATA.evaluation) headerLink("Evaluation: which map to trust", DATA.evaluation, "evaluation-link");
    if (DATA.summary) {
      headerLink("Summary: what the model relies on, per class", DATA.summary, "summary-link");
    }
    var notice = runNotice();
    if (notice) {
      var node = document.getElementById("run-state");
      node.textContent = notice;
      node.hidden = false;
    }
    fillSelect(document.getElementById("f-pred"), "p");
    fillSelect(document.getElementById("f-label"), "l");
    var timer = null;
    var form = document.getElementById("filters");
    form.addEventListener("change", function () { go(formState()); });
    form.addEventListener("submit", function (event) { event.preventDefault(); });
    document.getElementById("f-text").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { go(formState()); }, 250);
    });
    document.getElementById("f-reset").addEventListener("click", function () { go(DEFAULTS); });
    window.addEventListener("hashchange", renderGrid);
    renderGrid();
  }

  /* ---- the page of one image ---------------------------------------------------------- */

  function table(headers, rows) {
    var node = element("table");
    var head = element("tr");
    headers.forEach(function (h) { head.appendChild(element("th", null, h)); });
    node.appendChild(head);
    rows.forEach(function (cells) {
      var row = element("tr");
      cells.forEach(function (cell) {
        if (cell instanceof Node) {
          var td = element("td");
          td.appendChild(cell);
          row.appendChild(td);
        } else {
          row.appendChild(element("td", null, cell === undefined ? "" : cell));
        }
      });
      node.appendChild(row);
    });
    return node;
  }

  function section(title) {
    var node = element("section");
    node.appendChild(element("h2", null, title));
    return node;
  }

  function predictionsTable(detail) {
    var labelIndex = detail.label && detail.label.index;
    var predictions = detail.predictions || [];
    var node = table(["rank", "class", "index", "probability", "logit"], predictions.map(
      function (p) {
        var bar = element("span", "bar");
        var fill = element("span", "fill");
        fill.style.width = (typeof p.probability === "number" ? 100 * p.probability : 0) + "%";
        bar.appendChild(fill);
        var probability = element("span", null,
          typeof p.probability === "number" ? percent(p.probability) + " " : "");
        probability.appendChild(bar);
        return [p.rank, p.name, p.index, probability, p.logit];
      }));
    node.id = "topk";
    predictions.forEach(function (p, row) {
      if (labelIndex !== undefined && labelIndex !== null && p.index === labelIndex) {
        node.rows[row + 1].className = "is-label";
      }
    });
    return node;
  }

  function mapRows(maps) {
    return Object.keys(maps || {}).map(function (method) {
      var entry = maps[method] || {};
      var peak = entry.peak ? "(" + entry.peak.x + ", " + entry.peak.y + ")" : "";
      var max = typeof entry.max === "number" ? entry.max.toPrecision(4) : "";
      return [method, entry.layer !== undefined ? entry.layer : "", max, peak];
    });
  }

  /* Map statistics; with several targets, one row per target and map. */
  function mapsTable(maps, targets) {
    var head = ["map", "layer", "maximum", "peak (x, y)"];
    if (!targets.length) return table(head, mapRows(maps));
    var rows = [];
    targets.forEach(function (target) {
      var described = describeTarget(target);
      var own = mapRows(target && target.maps);
      if (!own.length) rows.push([described, "", "", "", ""]);
      own.forEach(function (row) { rows.push([described].concat(row)); });
    });
    return table(["target"].concat(head), rows);
  }

  function describeTarget(target) {
    if (Array.isArray(target)) return target.map(describeTarget).join(", ");
    if (!target || typeof target !== "object") return String(target);
    var text = (target.mode ? target.mode + ": " : "") + (target.name || target.index);
    if (typeof target.probability === "number") text += " (" + percent(target.probability) + ")";
    return text;
  }

  function regionsVerdict(detail) {
    if (detail.task === "detect") {
      var n = (detail.detections || []).length;
      var at = " with a score of at least " + detail.score_threshold;
      return n ? n + (n === 1 ? " detection" : " detections") + at : "no detection" + at;
    }
    var k = (detail.segments || []).length;
    var share = " covering at least " + percent(detail.min_pixels) + " of the image";
    return k ? k + (k === 1 ? " class" : " classes") + share : "no class" + share;
  }

  function peaks(maps) {
    return Object.keys(maps || {}).map(function (method) {
      var p = maps[method].peak || {};
      return method + " (" + p.x + ", " + p.y + ")";
    }).join("; ");
  }

  function renderDetail(position, detail) {
    var item = ITEMS[position];
    var main = document.getElementById("detail");
    main.textContent = "";
    var verdict = document.getElementById("verdict");
    verdict.className = "verdict " + verdictClass(item);
    if (item.s === "error" || detail.error) {
      verdict.textContent = "failed: " + (detail.error || item.e || "");
    } else if (detail.task === "detect" || detail.task === "segment") {
      verdict.textContent = regionsVerdict(detail);
    } else {
      var text = "predicted " + (item.p !== undefined ? item.p : "?");
      if (typeof item.q === "number") text += " (" + percent(item.q) + ")";
      if (item.l !== undefined) text += "; label " + item.l;
      if (item.c === true) text += ": correct";
      if (item.c === false) text += ": misclassified";
      verdict.textContent = text;
    }
    var meta = [];
    if (detail.model) meta.push("model " + detail.model);
    if (detail.layers) meta.push("layer " + [].concat(detail.layers).join(", "));
    if (detail.width) meta.push(detail.width + " x " + detail.height + " px");
    if (detail.target) meta.push("target " + describeTarget(detail.target));
    document.getElementById("meta").textContent = meta.join(" · ");

    var pictures = detail.pictures || [];
    if (pictures.length) {
      var gallery = section("Maps and overlays");
      var row = element("div", "gallery");
      pictures.forEach(function (picture) {
        // A lone picture (a comparison sheet, a feature grid) gets the whole width.
        var figure = element("figure", pictures.length === 1 ? "wide" : null);
        var link = element("a");
        link.href = picture.src;
        var img = element("img");
        img.src = picture.src;
        img.alt = picture.caption;
        link.appendChild(img);
        figure.appendChild(link);
        figure.appendChild(element("figcaption", null, picture.caption));
        row.appendChild(figure);
      });
      gallery.appendChild(row);
      main.appendChild(gallery);
    }
    if (Array.isArray(detail.detections) && detail.detections.length) {
      var found = section("Detections");
      found.appendChild(table(["rank", "class", "index", "score", "box (x1, y1, x2, y2)", "peaks"],
        detail.detections.map(function (d) {
          return [d.rank, d.name, d.index, d.score, (d.box || []).join(", "), peaks(d.maps)];
        })));
      main.appendChild(found);
    }
    if (Array.isArray(detail.segments) && detail.segments.length) {
      var classes = section("Segments");
      classes.appendChild(table(["class", "index", "pixels", "share", "peaks"],
        detail.segments.map(function (c) {
          return [c.name, c.index, c.pixels, percent(c.fraction), peaks(c.maps)];
        })));
      main.appendChild(classes);
    }
    if (detail.predictions && detail.predictions.length) {
      var top = section("Top-" + detail.predictions.length + " predictions");
      top.appendChild(predictionsTable(detail));
      main.appendChild(top);
    }
    if (Array.isArray(detail.rows) && detail.rows.length) {
      var models = section("Models");
      models.appendChild(table(["model", "layer", "top-1", "probability", "verdict"],
        detail.rows.map(function (row) {
          var top = row.prediction || {};
          var verdict = row.correct === true ? "correct" :
            row.correct === false ? "misclassified" : "";
          return [row.model, row.layer, top.name, typeof top.probability === "number" ?
            percent(top.probability) : "", verdict];
        })));
      main.appendChild(models);
    }
        var targets = [];
    if (detail.targets && typeof detail.targets === "object") {
      targets = Array.isArray(detail.targets) ? detail.targets :
        Object.keys(detail.targets).map(function (k) { return detail.targets[k]; });
    }
    var hasMaps = detail.maps && typeof detail.maps === "object" && Object.keys(detail.maps).length;
    if (hasMaps || targets.length) {
      var maps = section(targets.length ? "Targets and map statistics" : "Map statistics");
      maps.appendChild(mapsTable(detail.maps, targets));
      main.appendChild(maps);
    }
    var files = section("Files");
    var ul = element("ul");
    if (detail.record) {
      var li = element("li");
      var a = element("a", null, "record (JSON)");
      a.href = detail.record;
      li.appendChild(a);
      ul.appendChild(li);
    }
    (detail.files || []).forEach(function (file) {
      var li = element("li");
      var a = element("a", null, file.caption);
      a.href = file.href;
      li.appendChild(a);
      ul.appendChild(li);
    });
    if (detail.source) ul.appendChild(element("li", null, "source: " + detail.source));
    files.appendChild(ul);
    if (ul.childNodes.length) main.appendChild(files);
  }

  function headerLink(text, href, id) {
    var link = element("a", null, text);
    link.href = href;
    link.id = id;
    var line = element("p", null, "");
    line.appendChild(link);
    document.querySelector("header").appendChild(line);
  }

  // The image an address asks for: ?i=N (the grid's links), or the image's path under INPUT
  // as ?image=PATH, ?i=PATH or #PATH (an address written by hand). -1 when none matches.
  function wantedImage() {
    var params = new URLSearchParams(location.search);
    var number = params.get("i");
    if (number !== null && /^\d+$/.test(number)) return { position: parseInt(number, 10), asked: number };
    var path = params.get("image") || number;
    if (path === null) {
      var hash = decodeURIComponent(location.hash.replace(/^#/, ""));
      if (hash && hash.indexOf("=") < 0) path = hash;
    }
    if (path === null) return { position: -1, asked: null };
    for (var k = 0; k < ITEMS.length; k++) {
      if (ITEMS[k].i === path) return { position: k, asked: path };
    }
    return { position: -1, asked: path };
  }

  function initImage() {
    var wanted = wantedImage();
    var position = wanted.position;
    var main = document.getElementById("detail");
    if (!(position >= 0 && position < ITEMS.length)) {
      main.textContent = (wanted.asked === null ? "This address names no image" :
        "No image " + wanted.asked + " in this report") + ": the address should hold ?i=N (N " +
        "from 0 to " + (ITEMS.length - 1) + ") or ?image=PATH, the image's path under INPUT" +
        (ITEMS.length ? " (e.g. image.html?image=" + ITEMS[0].i + ")" : "") + ".";
      return;
    }
    var item = ITEMS[position];
    var state = readState(location.hash);
    var hash = "#" + writeState(state);
    document.getElementById("image-path").textContent = item.i;
    document.title = "camcli report: " + item.i;
    var chosen = selection(state);
    var at = chosen.indexOf(position);
    if (at >= 0) {
      state.page = Math.floor(at / state.size) + 1;
      document.getElementById("position").textContent = (at + 1) + " of " + chosen.length;
    }
    document.getElementById("back").href = "index.html#" + writeState(state);
    var neighbours = { prev: chosen[at - 1], next: chosen[at + 1] };
    Object.keys(neighbours).forEach(function (key) {
      var link = document.getElementById(key);
      if (at >= 0 && neighbours[key] !== undefined) {
        link.href = "image.html?i=" + neighbours[key] + hash;
      } else {
        link.removeAttribute("href");
        link.className += " disabled";
      }
    });
    document.addEventListener("keydown", function (event) {
      var link = event.key === "ArrowLeft" ? document.getElementById("prev") :
        event.key === "ArrowRight" ? document.getElementById("next") : null;
      if (link && link.hasAttribute("href")) location.href = link.href;
    });
    var chunk = Math.floor(position / DATA.chunk);
    window.CAMCLI_DETAILS = window.CAMCLI_DETAILS || {};
    var script = document.createElement("script");
    script.src = "details/" + chunk + ".js";
    script.onload = function () {
      var details = window.CAMCLI_DETAILS[chunk] || [];
      renderDetail(position, details[position - chunk * DATA.chunk] || { image: item.i });
    };
    script.onerror = function () {
      main.textContent = "The details of this image are missing: write the report again.";
    };
    document.body.appendChild(script);
  }

  window.CamcliReport = { readState: readState, writeState: writeState, selection: selection };
  if (document.body.dataset.page === "image") initImage();
  else initGrid();
})();
