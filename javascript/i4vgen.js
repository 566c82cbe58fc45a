// I4VGen panel helpers (loaded by A1111 for every active extension, after script.js).
// 1. Clicking a candidate in the panel's gallery sets the manual anchor index to that candidate.
// 2. After a job whose info carries I4VGen, the panel's gallery is refreshed with that job's candidates.
(function() {
    function tabRoot() {
        return typeof gradioApp === "function" ? gradioApp() : document;
    }

    function anchorInput(tab) {
        return tabRoot().querySelector("#script_" + tab + "_i4vgen_anchor_index input[type=number]");
    }

    function setAnchorIndex(tab, index) {
        var input = anchorInput(tab);
        if (!input) {
            return;
        }
        input.value = String(index);
        if (typeof updateInput === "function") {
            updateInput(input);
        } else {
            input.dispatchEvent(new Event("input", {bubbles: true}));
        }
    }

    function candidateIndex(gallery, button) {
        // Thumbnails of one gallery share a container; the grid and the preview strip are numbered alike.
        var siblings = Array.prototype.filter.call(button.parentElement.children, function(el) {
            return el.tagName === button.tagName;
        });
        return siblings.indexOf(button);
    }

    function bindGallery(tab) {
        var gallery = tabRoot().querySelector("#i4vgen_candidates_" + tab);
        if (!gallery || gallery.dataset.i4vgenBound) {
            return;
        }
        gallery.dataset.i4vgenBound = "1";
        gallery.addEventListener("click", function(event) {
            var button = event.target.closest("button");
            if (!button || !gallery.contains(button) || !button.querySelector("img")) {
                return;
            }
            var index = candidateIndex(gallery, button);
            if (index >= 0) {
                setAnchorIndex(tab, index);
                gallery.querySelectorAll(".i4vgen-picked").forEach(function(el) {
                    el.classList.remove("i4vgen-picked");
                });
                button.classList.add("i4vgen-picked");
            }
        }, true);
    }

    var lastInfo = {txt2img: null, img2img: null};

    function refreshAfterJob(tab) {
        var info = tabRoot().querySelector("#generation_info_" + tab + " textarea");
        var wanted = tabRoot().querySelector("#script_" + tab + "_i4vgen_return_candidates input[type=checkbox]");
        if (!info || info.value === lastInfo[tab]) {
            return;
        }
        lastInfo[tab] = info.value;
        if (wanted && wanted.checked && info.value.indexOf("I4VGen") >= 0) {
            var refresh = tabRoot().querySelector("#i4vgen_refresh_" + tab);
            if (refresh) {
                refresh.click();
            }
        }
    }

    function update() {
        ["txt2img", "img2img"].forEach(function(tab) {
            bindGallery(tab);
            refreshAfterJob(tab);
        });
    }

    if (typeof onAfterUiUpdate === "function") {
        onAfterUiUpdate(update);
    } else if (typeof onUiUpdate === "function") {
        onUiUpdate(update);
    }
})();
