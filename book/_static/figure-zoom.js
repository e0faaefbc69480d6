// Every figure in a cell output opens at full size in a new tab when clicked.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".cell_output img").forEach((img) => {
    if (img.closest("a")) return;
    const a = document.createElement("a");
    a.href = img.src;
    a.target = "_blank";
    a.title = "open the figure at full size";
    img.style.cursor = "zoom-in";
    img.parentNode.insertBefore(a, img);
    a.appendChild(img);
  });
});
